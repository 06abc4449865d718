"""``smirk-edge reconstruct INPUT... -o OUT``: images, folders and videos to overlays, meshes and JSON.

Per image ``NAME``: ``NAME.overlay.jpg``, ``NAME.json`` (faces: parameters, landmarks, box, head
pose) and ``NAME.face<i>.obj`` (or .ply). Per video: ``NAME.overlay.mp4`` and ``NAME.json`` (one
entry per frame). ``--glb`` adds glTF 2.0 files: ``NAME.face<i>.glb`` per image face and one
animated ``NAME.track<ID>.glb`` per video track (:mod:`smirk_edge.gltf`). ``summary.json`` lists inputs, faces, failures and mean per-stage times. An
unreadable input is reported and skipped; ``--strict`` turns any failure into exit code 1 (without
it, the exit code is 1 only when no input could be processed at all).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files, folders of images, or video files")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--bundle", default=None, help="model bundle folder (default: the embedded model)")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime, openvino or tensorrt")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "int8"], help="artifact precision")
    p.add_argument("--device", default=None, help="engine device, e.g. cpu, cuda, GPU, NPU")
    p.add_argument("--threads", type=int, default=None, help="engine threads")
    p.add_argument("--max-faces", type=int, default=8)
    p.add_argument("--no-refine", action="store_true", help="skip the second crop from predicted landmarks")
    p.add_argument("--mesh-format", choices=["obj", "ply", "none"], default="obj",
                   help="mesh files per face (images only)")
    p.add_argument("--glb", action="store_true",
                   help="also write glTF 2.0: NAME.face<i>.glb per image face, one animated NAME.track<ID>.glb "
                        "per video track (needs the gltf extra: pygltflib)")
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    p.add_argument("--strict", action="store_true", help="exit with code 1 when any input fails")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def collect_inputs(inputs: list[str], recursive: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand folders (sorted) and check that each input exists. Returns (files, problems)."""
    files, problems = [], []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            pattern = "**/*" if recursive else "*"
            found = sorted(f for f in p.glob(pattern) if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES)
            if not found:
                problems.append((item, "folder holds no images or videos"))
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            problems.append((item, "no such file or folder"))
    return files, problems


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, k = path.stem, 1
    while stem in used:
        k += 1
        stem = f"{path.stem}-{k}"
    used.add(stem)
    return stem


def _image(rec, path: Path, out: Path, stem: str, mesh_format: str, glb: bool = False) -> int:
    import cv2

    from .draw import draw
    from .image import load_image

    image = load_image(path)
    faces = rec(image)
    cv2.imwrite(str(out / f"{stem}.overlay.jpg"), draw(image, faces))
    (out / f"{stem}.json").write_text(json.dumps(
        {"input": str(path), "width": image.shape[1], "height": image.shape[0], "timings_ms": rec.timings,
         "faces": [f.to_dict() for f in faces]}, indent=1))
    if mesh_format != "none":
        for i, f in enumerate(faces):
            f.save_mesh(out / f"{stem}.face{i}.{mesh_format}")
    for i, f in enumerate(faces if glb else []):  # glTF hook: smirk_edge.gltf
        f.save_mesh(out / f"{stem}.face{i}.glb", space="model")
    return len(faces)


def _video(rec, path: Path, out: Path, stem: str, glb: bool = False) -> int:
    import cv2

    from .draw import draw
    from .errors import InputError

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InputError(f"{path}: cannot open video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    writer, frames_json, n_faces = None, [], 0
    tracks = None
    if glb:  # glTF hook: one animated .glb per track (smirk_edge.gltf)
        from .gltf import TrackRecorder

        tracks = TrackRecorder(rec.face_model)

    def frames():
        while True:
            ok, frame = cap.read()
            if not ok:
                return
            yield frame

    try:
        source = frames()
        for index, faces in enumerate(rec.stream(_tee(source, holder := []))):
            frame = holder.pop()
            if writer is None:
                h, w = frame.shape[:2]
                writer = cv2.VideoWriter(str(out / f"{stem}.overlay.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
            writer.write(draw(frame, faces))
            frames_json.append({"frame": index, "faces": [f.to_dict() for f in faces]})
            n_faces += len(faces)
            if tracks is not None:
                tracks.add(index / fps, faces)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if not frames_json:
        raise InputError(f"{path}: no frame could be read")
    (out / f"{stem}.json").write_text(json.dumps({"input": str(path), "fps": fps, "frames": frames_json}))
    if tracks is not None:
        tracks.save(out, stem)
    return n_faces


def _tee(source, holder: list):
    for frame in source:
        holder.append(frame)
        yield frame


def run(args: argparse.Namespace) -> int:
    from .errors import SmirkEdgeError
    from .progress import progress
    from .reconstructor import Reconstructor

    if getattr(args, "glb", False):  # fail before any work when pygltflib is missing
        from ._lazy import require

        require("pygltflib")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    files, failures = collect_inputs(args.inputs, args.recursive)
    for name, why in failures:
        print(f"smirk-edge reconstruct: {name}: {why}", file=sys.stderr)
    rec = Reconstructor(args.bundle, backend=args.backend, precision=args.precision, device=args.device,
                        refine=not args.no_refine, max_faces=args.max_faces, threads=args.threads)
    stage_sums: dict[str, float] = {}
    n_images = n_faces = n_failed_files = 0
    used: set[str] = set()
    with rec:
        for path in progress(files, total=len(files), desc="reconstruct", enabled=not args.quiet):
            stem = _unique_stem(path, used)
            try:
                if path.suffix.lower() in VIDEO_SUFFIXES:
                    n_faces += _video(rec, path, out, stem, glb=args.glb)
                else:
                    n_faces += _image(rec, path, out, stem, args.mesh_format, glb=args.glb)
                    n_images += 1
                    for k, v in rec.timings.items():
                        stage_sums[k] = stage_sums.get(k, 0.0) + v
            except (SmirkEdgeError, OSError) as exc:
                failures.append((str(path), str(exc)))
                print(f"smirk-edge reconstruct: {exc}" if str(path) in str(exc) else
                      f"smirk-edge reconstruct: {path}: {exc}", file=sys.stderr)
                n_failed_files += 1
        engine = rec.engine
    means = {k: round(v / n_images, 3) for k, v in stage_sums.items()} if n_images else {}
    summary = {"inputs": len(files), "faces": n_faces, "failed": [{"input": n, "error": e} for n, e in failures],
               "mean_ms": means, "engine": engine}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    stages = ", ".join(f"{k} {v:.1f}" for k, v in means.items() if k != "decode_image")
    print(f"{len(files) - n_failed_files}/{len(files)} inputs done, "
          f"{n_faces} faces, {len(failures)} failed | mean ms: {stages} | {engine}")
    nothing_done = bool(failures) and not (len(files) - n_failed_files)
    return 1 if (failures and (args.strict or nothing_done)) else 0
