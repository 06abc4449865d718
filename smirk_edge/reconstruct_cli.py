"""``smirk-edge reconstruct INPUT... -o OUT``: images, folders and videos to overlays, meshes and JSON.

Per image ``NAME``: ``NAME.overlay.jpg``, ``NAME.json`` (faces: parameters, landmarks, box, head
pose) and ``NAME.face<i>.obj`` (or .ply). Per video, camera (``0``) or stream URL (``rtsp://...``,
``http://.../stream.mjpg``): ``NAME.jsonl`` (one line per frame, written as it is made, so a crash
or Ctrl-C loses at most the current frame), ``NAME.overlay.mp4`` and the summary ``NAME.json`` (see
:mod:`smirk_edge.video_out`). ``--glb`` adds glTF 2.0 files: ``NAME.face<i>.glb`` per image face and
one animated ``NAME.track<ID>.glb`` per video track (:mod:`smirk_edge.gltf`). ``summary.json`` lists
every input with its result files or its failure, the faces and mean per-stage times. An
unreadable input, or any error while one input is processed, is reported and the run goes on;
``--strict`` turns any failure into exit code 1 (without it, the exit code is 1 only when no input
could be processed at all).

Nothing is lost or left half-written: every file is written to a temporary name and renamed when
complete (a full disk or a signal leaves no truncated JSON), every write is checked, an image's
``NAME.json`` is written last and its files are removed again when any of them fails. The output
folder is checked (creatable, writable, not one of the input folders) before the model is loaded.
An input named ``summary.*`` gets the stem ``summary-2``. SIGTERM or Ctrl-C stops after the
current input and still writes ``summary.json`` (with ``interrupted`` and ``not_run``); the exit
code is then 128 + the signal number.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from pathlib import Path
from typing import Callable

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
RESERVED_STEMS = {"summary"}
REFINE_CHOICES = {"on": True, "off": False, "auto": "auto"}


def refine_options(args: argparse.Namespace) -> dict:
    """The Reconstructor keywords of ``--refine`` / ``--no-refine`` / ``--refine-threshold``: only
    what was given, so that the Reconstructor's defaults hold otherwise. Contradicting flags raise
    :class:`~smirk_edge.errors.OptionError`."""
    from .errors import OptionError

    out: dict = {}
    refine = getattr(args, "refine", None)
    if getattr(args, "no_refine", False):
        if refine not in (None, "off"):
            raise OptionError(f"--no-refine contradicts --refine {refine}: give one of them")
        refine = "off"
    if refine is not None:
        out["refine"] = REFINE_CHOICES[refine]
    threshold = getattr(args, "refine_threshold", None)
    if threshold is not None:
        if refine not in (None, "auto"):
            raise OptionError(f"--refine-threshold applies to --refine auto only, not --refine {refine}")
        out["refine_threshold"] = threshold
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="image files, folders of images, video files, camera indices (0) "
                   "or stream URLs (rtsp://, http(s)://)")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--bundle", default=None, help="model bundle folder (default: the embedded model)")
    p.add_argument("--variant", default=None, choices=["full", "fast", "faster", "mesh"],
                   help="encoder variant: without --bundle, the embedded model of that variant (full, the "
                        "default, or fast); with --bundle, checked against the bundle's")
    p.add_argument("--backend", default="auto", help="auto, onnxruntime, openvino or tensorrt")
    p.add_argument("--precision", default=None, choices=["fp32", "fp16", "int8"], help="artifact precision")
    p.add_argument("--device", default=None, help="engine device, e.g. cpu, cuda, GPU, NPU")
    p.add_argument("--threads", type=int, default=None, help="engine threads")
    p.add_argument("--max-faces", type=int, default=8)
    p.add_argument("--refine", choices=sorted(REFINE_CHOICES), default=None,
                   help="second crop from the predicted landmarks: on (every face), off (one encoder pass), auto "
                        "(only faces whose two boxes disagree); default: the Reconstructor's (docs/crop.md)")
    p.add_argument("--refine-threshold", type=float, default=None,
                   help="--refine auto: re-encode when 1 - IoU of the two boxes exceeds this (default: the "
                        "Reconstructor's)")
    p.add_argument("--no-refine", action="store_true", help="same as --refine off")
    p.add_argument("--mesh-format", choices=["obj", "ply", "none"], default="obj",
                   help="mesh files per face (images only)")
    p.add_argument("--glb", action="store_true",
                   help="also write glTF 2.0: NAME.face<i>.glb per image face, one animated NAME.track<ID>.glb "
                        "per video track (needs the gltf extra: pygltflib)")
    p.add_argument("--recursive", action="store_true", help="look for images in sub-folders too")
    p.add_argument("--strict", action="store_true", help="exit with code 1 when any input fails")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    # video, camera and stream options (smirk_edge.video_out)
    p.add_argument("--max-frames", type=int, default=None, help="videos and streams: stop after N frames")
    p.add_argument("--no-overlay", action="store_true", help="videos and streams: no overlay video")


def collect_inputs(inputs: list[str], recursive: bool = False) -> tuple[list[Path], list[tuple[str, str]]]:
    """Expand folders (sorted) and check that each input exists. Returns (files, problems)."""
    from .fileio import display_path

    files, problems = [], []
    for item in inputs:
        p = Path(item)
        try:
            if p.is_dir():
                pattern = "**/*" if recursive else "*"
                found = sorted((f for f in p.glob(pattern)
                                if f.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES and f.is_file()),
                               key=lambda f: os.fsencode(f))
                if not found:
                    problems.append((display_path(item), "folder holds no images or videos"))
                files.extend(found)
            elif p.is_file():
                files.append(p)
            else:
                problems.append((display_path(item), "no such file or folder"))
        except OSError as exc:
            problems.append((display_path(item), f"cannot be listed ({exc.strerror or exc})"))
    return files, problems


def _is_live(spec: str) -> bool:
    """A camera index or a stream URL (not a file that happens to have such a name)."""
    from .sources import is_live_spec

    return is_live_spec(spec) and not Path(spec).exists()


def _live_stem(spec: str) -> str:
    """``camera0`` for a camera index; the URL's last path part (or host) for a stream."""
    if spec.strip().isdigit():
        return f"camera{spec.strip()}"
    from urllib.parse import urlsplit

    u = urlsplit(spec)
    name = Path(u.path).stem or u.hostname or "stream"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "stream"


def _unique_stem(path: Path, used: set[str], taken_names: set[str] = frozenset()) -> str:
    """An output stem for ``path`` not used yet, not reserved (``summary``), and whose files would not
    overwrite an input (``taken_names``: names of input files that lie in the output folder)."""
    def free(stem: str) -> bool:
        return (stem not in used and stem.lower() not in RESERVED_STEMS
                and f"{stem}.overlay.jpg" not in taken_names and f"{stem}.overlay.mp4" not in taken_names)

    stem, k = path.stem, 1
    while not free(stem):
        k += 1
        stem = f"{path.stem}-{k}"
    used.add(stem)
    return stem


def _check_output(out: Path, inputs: list[str], recursive: bool) -> None:
    from .errors import OutputError
    from .fileio import check_output_folder, display_path

    if out.exists() and not out.is_dir():
        raise OutputError(f"-o {display_path(out)} is a file, not a folder: name a folder for the results")
    target = out.resolve()
    for item in inputs:
        p = Path(item)
        if not p.is_dir():
            continue
        src = p.resolve()
        if target == src or (recursive and src in target.parents):
            raise OutputError(f"-o {display_path(out)} is the input folder {display_path(item)} (or inside it): "
                              "results would overwrite your files and be read as inputs; choose another folder")
    check_output_folder(out)


def _json_bytes(doc: dict) -> bytes:
    return json.dumps(doc, indent=1, allow_nan=False).encode("utf-8")


def _image(rec, path: Path, out: Path, stem: str, mesh_format: str, written: list[Path], glb: bool = False,
           done: Callable[[int], None] | None = None) -> int:
    """One image: reconstruct (interruptible), then write its files and record it (``done``) with
    SIGINT/SIGTERM held, so a signal leaves either every file of the input and its record, or none
    (a held signal is delivered right after). Each path is in ``written`` before its file exists."""
    from .draw import draw
    from .fileio import atomic_write, display_path
    from .image import encode_image, load_image

    image = load_image(path)
    faces = rec(image)
    overlay = encode_image(draw(image, faces), ".jpg")
    doc = _json_bytes({"input": display_path(path), "width": image.shape[1], "height": image.shape[0],
                       "timings_ms": rec.timings, "faces": [f.to_dict() for f in faces]})
    del image

    def put(target: Path, write: Callable[[], Path | None]) -> None:
        written.append(target)  # first: a write cut short is still cleaned up
        made = write()
        if made is not None and Path(made) != target:
            written.append(Path(made))

    with _signals_held():
        put(out / f"{stem}.overlay.jpg", lambda: atomic_write(out / f"{stem}.overlay.jpg", overlay))
        if mesh_format != "none":
            for i, f in enumerate(faces):
                target = out / f"{stem}.face{i}.{mesh_format}"
                put(target, lambda f=f, target=target: f.save_mesh(target))
        for i, f in enumerate(faces if glb else []):  # glTF hook: smirk_edge.gltf
            target = out / f"{stem}.face{i}.glb"
            put(target, lambda f=f, target=target: f.save_mesh(target, space="model"))
        put(out / f"{stem}.json", lambda: atomic_write(out / f"{stem}.json", doc))  # last: the input is done
        if done is not None:
            done(len(faces))
    return len(faces)


def _video(rec, path: Path | str, out: Path, stem: str, args: argparse.Namespace, written: list[Path]) -> int:
    """A video file, camera or stream: :func:`smirk_edge.video_out.reconstruct_video` (per-frame JSON
    Lines as they are made, overlay, summary). A file's path reaches OpenCV only in a safe form."""

    from .errors import InputError
    from .fileio import display_path, opencv_readable_path
    from .sources import open_source
    from .video_out import reconstruct_video

    tracks = None
    if getattr(args, "glb", False):  # glTF hook: one animated .glb per track (smirk_edge.gltf)
        from .gltf import TrackRecorder

        tracks = TrackRecorder(rec.face_model)
    opened = opencv_readable_path(path) if isinstance(path, Path) else contextlib.nullcontext(str(path))
    with opened as spec, open_source(spec, getattr(args, "max_frames", None)) as src:
        fps = src.fps or 30.0
        on_frame = (lambda i, faces: tracks.add(i / fps, faces)) if tracks is not None else None
        summary = reconstruct_video(rec, src, out, stem, overlay=not getattr(args, "no_overlay", False),
                                    show_progress=not args.quiet, on_frame=on_frame)
    name = display_path(path) if isinstance(path, Path) else str(path)
    if not summary["frames"]:
        raise InputError(f"{name}: no frame could be read")
    if summary.get("truncated"):
        print(f"smirk-edge reconstruct: {name}: truncated: {summary.get('frames_read')} of "
              f"{summary.get('expected_frames')} frames could be read", file=sys.stderr)
    if tracks is not None:
        written.extend(tracks.save(out, stem))
    return summary["faces"]


class _Interrupted(BaseException):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_HOLD = {"depth": 0, "pending": None}
"""While :func:`_signals_held` is active, a signal is kept here and raised when the block ends."""


def _raise_interrupted(signum, _frame):
    if _HOLD["depth"]:
        _HOLD["pending"] = _HOLD["pending"] or signum
        return
    raise _Interrupted(signum)


@contextlib.contextmanager
def _signals_held():
    """SIGINT / SIGTERM held for the block: one that arrives is kept, and raised as
    :class:`_Interrupted` by :func:`_deliver_held_signal` once the input is accounted for, so the
    outputs of one input and its record stay together. (Python runs signal handlers in the main
    thread, whichever thread the signal reached: a flag works where a signal mask would not, since
    the engines' threads do not block signals.)"""
    _HOLD["depth"] += 1
    try:
        yield
    finally:
        _HOLD["depth"] -= 1


def _deliver_held_signal() -> None:
    """Raise the signal :func:`_signals_held` kept, if any."""
    if not _HOLD["depth"] and _HOLD["pending"] is not None:
        signum, _HOLD["pending"] = _HOLD["pending"], None
        raise _Interrupted(signum)


def _install_signal_handlers() -> dict:
    _HOLD["depth"], _HOLD["pending"] = 0, None  # a fresh run holds nothing from an earlier one
    old = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, _raise_interrupted)
        except (ValueError, OSError):  # not the main thread
            pass
    return old


def _remove(paths: list[Path]) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


def _failure_text(path: Path, exc: BaseException) -> str:
    from .errors import SmirkEdgeError
    from .fileio import display_path

    name = display_path(path)
    msg = str(exc) if isinstance(exc, (SmirkEdgeError, OSError)) else f"{type(exc).__name__}: {exc}"
    msg = msg if len(msg) <= 800 else msg[:800] + f"...<{len(msg)} chars>"
    if not msg.strip():
        msg = type(exc).__name__
    return msg if name in msg else f"{name}: {msg}"


def run(args: argparse.Namespace) -> int:
    from .errors import OutputError
    from .fileio import atomic_write, display_path
    from .progress import progress
    from .reconstructor import Reconstructor

    refine = refine_options(args)  # contradicting flags fail before any work
    if getattr(args, "glb", False):  # fail before any work when pygltflib is missing
        from ._lazy import require

        require("pygltflib")
    out = Path(args.output)
    _check_output(out, [i for i in args.inputs if not _is_live(i)], args.recursive)  # before any work
    live = [i for i in args.inputs if _is_live(i)]  # cameras, stream URLs
    files, problems = collect_inputs([i for i in args.inputs if i not in live], args.recursive)
    failures = [{"input": n, "error": why} for n, why in problems]
    for name, why in problems:
        print(f"smirk-edge reconstruct: {name}: {why}", file=sys.stderr)
    out_dir = out.resolve()
    taken = {p.name for p in files if p.resolve().parent == out_dir}
    rec = Reconstructor(args.bundle, variant=args.variant, backend=args.backend, precision=args.precision,
                        device=args.device,
                        max_faces=args.max_faces, threads=args.threads, **refine)
    stage_sums: dict[str, float] = {}
    n_images = n_faces = n_failed_files = 0
    used: set[str] = set()
    results: list[dict] = []
    interrupted: int | None = None
    done = 0
    old_handlers = _install_signal_handlers()
    try:
        with rec:
            engine = rec.engine
            items: list[Path | str] = [*files, *live]
            for path in progress(items, total=len(items), desc="reconstruct", enabled=not args.quiet):
                stem = _unique_stem(Path(_live_stem(path)) if isinstance(path, str) else path, used, taken)
                written: list[Path] = []
                try:
                    if isinstance(path, str) or path.suffix.lower() in VIDEO_SUFFIXES:
                        k = _video(rec, path, out, stem, args, written)
                        written += [p for p in (out / f"{stem}.jsonl", out / f"{stem}.overlay.mp4",
                                                out / f"{stem}.json") if p.exists()]
                        n_faces += k
                        results.append({"input": display_path(path) if isinstance(path, Path) else path,
                                        "stem": stem, "faces": k, "files": [p.name for p in written]})
                    else:
                        def record(k: int, path: Path = path, stem: str = stem, written: list[Path] = written) -> None:
                            nonlocal n_images, n_faces
                            n_images += 1
                            for key, v in rec.timings.items():
                                stage_sums[key] = stage_sums.get(key, 0.0) + v
                            n_faces += k
                            results.append({"input": display_path(path), "stem": stem, "faces": k,
                                            "files": [p.name for p in written]})

                        # its files and its record are made with signals held (_signals_held)
                        _image(rec, path, out, stem, args.mesh_format, written, glb=args.glb, done=record)
                except BaseException as exc:  # the per-input boundary: clean up; record and go on
                    _remove(written)  # a video's JSON Lines are never in it: its frames so far are kept
                    if not isinstance(exc, Exception):
                        raise  # a signal (or SystemExit): stop, the summary is still written
                    text = _failure_text(path, exc)
                    failures.append({"input": display_path(path) if isinstance(path, Path) else path,
                                     "error": text, "type": type(exc).__name__})
                    print(f"smirk-edge reconstruct: {text}", file=sys.stderr)
                    n_failed_files += 1
                done += 1
                _deliver_held_signal()  # a signal held while the input was finished stops the run here
    except (_Interrupted, KeyboardInterrupt) as sig:
        interrupted = getattr(sig, "signum", signal.SIGINT)
        engine = getattr(rec, "engine", None)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
    means = {k: round(v / n_images, 3) for k, v in stage_sums.items()} if n_images else {}
    summary = {"inputs": len(files) + len(live), "faces": n_faces, "results": results, "failed": failures,
               "mean_ms": means, "engine": engine, "model": rec.model}
    if interrupted is not None:
        summary["interrupted"] = signal.Signals(interrupted).name
        summary["not_run"] = [display_path(p) for p in files[done:]]
    try:
        atomic_write(out / "summary.json", _json_bytes(summary))
    except OutputError as exc:  # keep it anyway: on stdout, one line of JSON
        print(json.dumps(summary, allow_nan=False))
        print(f"smirk-edge reconstruct: error: the summary could not be written (printed on stdout instead): "
              f"{exc}", file=sys.stderr)
        return 1
    stages = ", ".join(f"{k} {v:.1f}" for k, v in means.items() if k != "decode_image")
    print(f"{len(results)}/{len(files) + len(live)} inputs done, "
          f"{n_faces} faces, {len(failures)} failed | mean ms: {stages} | {engine}")
    if interrupted is not None:
        print(f"smirk-edge reconstruct: interrupted by {signal.Signals(interrupted).name}; "
              f"{len(files) + len(live) - done} inputs not run (listed in summary.json)", file=sys.stderr)
        return 128 + interrupted
    nothing_done = bool(failures) and not results
    return 1 if (failures and (args.strict or nothing_done)) else 0
