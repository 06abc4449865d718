"""``smirk-edge reconstruct INPUT... -o OUT``: images, folders and videos to overlays, meshes and JSON.

Per image ``NAME``: ``NAME.overlay.jpg``, ``NAME.json`` (faces: parameters, landmarks, box, head
pose) and ``NAME.face<i>.obj`` (or .ply). Per video, camera (``0``) or stream URL (``rtsp://...``,
``http://.../stream.mjpg``): ``NAME.jsonl`` (one line per frame, written as it is made),
``NAME.overlay.mp4`` and the summary ``NAME.json`` (see :mod:`smirk_edge.video_out`). ``summary.json`` lists inputs, faces, failures and mean per-stage times. An
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
    p.add_argument("inputs", nargs="+", help="image files, folders of images, video files, camera indices (0) "
                   "or stream URLs (rtsp://, http(s)://)")
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
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    p.add_argument("--strict", action="store_true", help="exit with code 1 when any input fails")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # video, camera and stream options (smirk_edge.video_out)
    p.add_argument("--max-frames", type=int, default=None, help="videos and streams: stop after N frames")
    p.add_argument("--no-overlay", action="store_true", help="videos and streams: no overlay video")


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


def _live_stem(spec: str) -> str:
    """``camera0`` for a camera index; the URL's last path part (or host) for a stream."""
    if spec.strip().isdigit():
        return f"camera{spec.strip()}"
    from urllib.parse import urlsplit

    u = urlsplit(spec)
    name = Path(u.path).stem or u.hostname or "stream"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "stream"


def _unique_stem(path: Path, used: set[str]) -> str:
    stem, k = path.stem, 1
    while stem in used:
        k += 1
        stem = f"{path.stem}-{k}"
    used.add(stem)
    return stem


def _image(rec, path: Path, out: Path, stem: str, mesh_format: str) -> int:
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
    return len(faces)


def _video(rec, path: Path | str, out: Path, stem: str, args: argparse.Namespace) -> int:
    """A video file, camera or stream: :func:`smirk_edge.video_out.reconstruct_video`."""
    from .errors import InputError
    from .sources import open_source
    from .video_out import reconstruct_video

    with open_source(str(path), getattr(args, "max_frames", None)) as src:
        summary = reconstruct_video(rec, src, out, stem, overlay=not getattr(args, "no_overlay", False),
                                    show_progress=not args.quiet)
    if not summary["frames"]:
        raise InputError(f"{path}: no frame could be read")
    if summary["truncated"]:
        print(f"smirk-edge reconstruct: {path}: truncated: {summary['frames_read']} of "
              f"{summary['expected_frames']} frames could be read", file=sys.stderr)
    return summary["faces"]


def run(args: argparse.Namespace) -> int:
    from .errors import SmirkEdgeError
    from .progress import progress
    from .reconstructor import Reconstructor

    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    from .sources import is_live_spec

    live = [i for i in args.inputs if is_live_spec(i) and not Path(i).exists()]  # cameras, stream URLs
    files, failures = collect_inputs([i for i in args.inputs if i not in live], args.recursive)
    for name, why in failures:
        print(f"smirk-edge reconstruct: {name}: {why}", file=sys.stderr)
    rec = Reconstructor(args.bundle, backend=args.backend, precision=args.precision, device=args.device,
                        refine=not args.no_refine, max_faces=args.max_faces, threads=args.threads)
    stage_sums: dict[str, float] = {}
    n_images = n_faces = n_failed_files = 0
    used: set[str] = set()
    with rec:
        items: list[Path | str] = [*files, *live]
        for path in progress(items, total=len(items), desc="reconstruct", enabled=not args.quiet):
            stem = _unique_stem(Path(_live_stem(path)) if isinstance(path, str) else path, used)
            try:
                if isinstance(path, str) or path.suffix.lower() in VIDEO_SUFFIXES:
                    n_faces += _video(rec, path, out, stem, args)
                else:
                    n_faces += _image(rec, path, out, stem, args.mesh_format)
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
    summary = {"inputs": len(files) + len(live), "faces": n_faces, "failed": [{"input": n, "error": e} for n, e in failures],
               "mean_ms": means, "engine": engine}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    stages = ", ".join(f"{k} {v:.1f}" for k, v in means.items() if k != "decode_image")
    n_inputs = len(files) + len(live)
    print(f"{n_inputs - n_failed_files}/{n_inputs} inputs done, "
          f"{n_faces} faces, {len(failures)} failed | mean ms: {stages} | {engine}")
    nothing_done = bool(failures) and not (n_inputs - n_failed_files)
    return 1 if (failures and (args.strict or nothing_done)) else 0
