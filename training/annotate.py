"""``smirk-edge annotate``: MediaPipe face-mesh landmarks for image folders, as training labels.

MediaPipe is not a dependency of smirk-edge (mediapipe 0.10.21, the last wheel that bundles its
face-mesh models, pins numpy<2). This front end needs numpy only (tqdm for the progress bar when
installed); it starts ``mp_worker.py`` (next to this file, self-contained) **by file path** with
an interpreter that can import mediapipe, and talks to it over a pipe (see that file for the
protocol). The interpreter is ``--mediapipe-python`` / ``python=``, else ``$SMIRK_EDGE_MEDIAPIPE_PYTHON``,
else the current one if it has mediapipe.

For every image it stores (format version :data:`FORMAT_VERSION`, documented in
``docs/annotation.md``): the 478 MediaPipe landmarks in image pixels, the 105 MediaPipe-indexed
points SMIRK's landmark loss uses, 68-point landmarks derived from the 468-point mesh with the
stand-in face model's barycentric embedding (contour row chosen by the head yaw of a similarity
fit to the stand-in template), the head rotation of that fit and the 478-landmark bounding box
(the box SMIRK's crop policy starts from).

Output folder: ``index.json`` + ``shard-00000.npz``, ``shard-00001.npz``... (plain arrays,
``np.load(..., allow_pickle=False)`` reads them). Shards are written atomically, so an interrupted
run leaves only complete shards, and a re-run skips every image already in a shard.

Python API: :func:`annotate`, :func:`load_annotations`, :func:`iter_annotations`,
:func:`read_index`, :func:`derive_landmarks`.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures as cf
import datetime as _dt
import importlib.util
import json
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import SmirkEdgeError

FORMAT_NAME = "smirk-edge-annotations"
FORMAT_VERSION = 1
ENV_PYTHON = "SMIRK_EDGE_MEDIAPIPE_PYTHON"
WORKER_PATH = Path(__file__).resolve().with_name("mp_worker.py")
WORKER_PROTOCOL = 1
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".jp2", ".pgm", ".ppm")
N_MP = 478
N_MESH = 468
SHARD_GLOB = "shard-*.npz"
WORKER_DIED = "the MediaPipe worker died on this image"
INSTALL_HINT = ("make one with:  python -m venv mp && mp/bin/pip install mediapipe==0.10.21  "
                f"then pass --mediapipe-python mp/bin/python (or set {ENV_PYTHON})")

#: Per-image arrays of a shard / of :func:`load_annotations` (``N`` images, ``F`` = max_faces).
#: Missing faces are NaN (float) / -1 (int).
ARRAYS = {
    "path": "(N,) str, path relative to the index's root, '/'-separated",
    "image_size": "(N, 2) int32 width, height in pixels (0, 0 when unreadable)",
    "found": "(N,) bool, at least one face",
    "num_faces": "(N,) int32, faces stored (<= F)",
    "error": "(N,) str, '' or why the image could not be read",
    "padded": "(N,) bool, found only after padding the image (see mp_worker.py)",
    "landmarks478": "(N, F, 478, 3) float32 pixels: x, y, z = z_norm * width",
    "landmarks105": "(N, F, 105, 3) float32 pixels, MEDIAPIPE_105_INDICES of landmarks478",
    "landmarks68": "(N, F, 68, 3) float32 pixels, stand-in embedding on the 468-point mesh",
    "box": "(N, F, 4) float32 x0, y0, x1, y1 pixels of the 478 landmarks' x, y",
    "rotation": "(N, F, 3, 3) float32 head rotation, stand-in template -> face, model frame",
    "yaw": "(N, F) float32 degrees, as smirk_edge.face_model.model.yaw_bin defines it",
    "contour_row": "(N, F) int32 dynamic-contour row used for landmarks68 (-1: no face)",
    "fit_rmse": "(N, F) float32 pixels, RMS residual of the similarity fit over the 468 points",
}


class AnnotationError(SmirkEdgeError):
    """An annotation folder or request that cannot be used (wrong format, root, options)."""


class MediaPipeUnavailable(SmirkEdgeError, ImportError):
    """No Python interpreter with mediapipe 0.10.21 was found, or its worker failed to start."""


# ---------------------------------------------------------------------------------------------
# landmark derivation (numpy only)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares similarity (Umeyama / Kabsch with scale) with ``dst ~ s * R @ src + t``.

    Args:
        src: ``(N, 3)`` reference points (e.g. the stand-in template, metres).
        dst: ``(F, N, 3)`` observed points of F faces (any unit, same frame convention as src).

    Returns:
        ``s (F,)``, ``R (F, 3, 3)`` proper rotations (det +1), ``t (F, 3)``, ``rmse (F,)`` in dst units.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = src.shape[0]
    a = src - src.mean(0)
    mu = dst.mean(1, keepdims=True)
    b = dst - mu
    h = np.einsum("fni,nj->fij", b, a) / n
    u, sv, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(u @ vt))
    d[d == 0] = 1.0
    dm = np.zeros((len(d), 3, 3))
    dm[:, 0, 0] = dm[:, 1, 1] = 1.0
    dm[:, 2, 2] = d
    rot = u @ dm @ vt
    s = (sv[:, 0] + sv[:, 1] + d * sv[:, 2]) / ((a ** 2).sum() / n)
    t = mu[:, 0] - s[:, None] * np.einsum("fij,j->fi", rot, src.mean(0))
    pred = s[:, None, None] * np.einsum("fij,nj->fni", rot, src) + t[:, None]
    rmse = np.sqrt(((pred - dst) ** 2).sum(-1).mean(-1))
    return s, rot, t, rmse


def yaw_degrees(rot: np.ndarray) -> np.ndarray:
    """Yaw ``(B,)`` degrees of rotations ``(B, 3, 3)``, with the formula of ``yaw_bin``."""
    sy = np.sqrt(rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2)
    return np.degrees(np.arctan2(-rot[:, 2, 0], sy))


def derive_landmarks(landmarks478: np.ndarray, face_model=None) -> dict[str, np.ndarray]:
    """105- and 68-point landmarks, head rotation and box from MediaPipe's 478 points.

    Args:
        landmarks478: ``(F, 478, 3)`` (or ``(F, 468+, 3)`` for the 68/rotation part) image pixels:
            x right, y down, z = MediaPipe depth scaled like x (smaller = closer to the camera).
        face_model: a :class:`~smirk_edge.face_model.FaceModel` whose vertices are MediaPipe indices
            0..467 (the stand-in, the default).

    Returns:
        ``landmarks105 (F, 105, 3)``, ``landmarks68 (F, 68, 3)`` pixels; ``box (F, 4)``
        x0, y0, x1, y1 pixels; ``rotation (F, 3, 3)`` (model frame: x right in the image, y up,
        z toward the camera; template -> face); ``yaw (F,)`` degrees; ``contour_row (F,)``;
        ``fit_rmse (F,)`` pixels.

    The head rotation is a similarity fit of the 468 mesh points, converted to the model frame
    ``(x, -y, -z)``, to the face model's template; the 17 contour points use the dynamic-contour row
    ``yaw_bin(rotation)`` exactly as the decoder picks it, the 51 others the static embedding.
    Barycentric interpolation is affine, so it is done directly in pixel space (x, y and z).
    """
    from ..face_model import MEDIAPIPE_105_INDICES
    from ..face_model.model import yaw_bin

    fm = face_model if face_model is not None else _standin()
    if fm.n_vertices != N_MESH:
        raise AnnotationError(f"68-point derivation needs a face model on MediaPipe's {N_MESH}-point mesh "
                              f"(the stand-in); {fm.model_id!r} has {fm.n_vertices} vertices")
    lm = np.asarray(landmarks478, np.float64)
    if lm.ndim != 3 or lm.shape[1] < N_MESH or lm.shape[2] != 3:
        raise AnnotationError(f"landmarks must be (F, 478, 3), got {lm.shape}")
    f = lm.shape[0]
    out = {
        "landmarks105": lm[:, MEDIAPIPE_105_INDICES].astype(np.float32) if lm.shape[1] > MEDIAPIPE_105_INDICES.max()
        else np.full((f, len(MEDIAPIPE_105_INDICES), 3), np.nan, np.float32),
        "box": np.stack([lm[:, :, 0].min(1), lm[:, :, 1].min(1), lm[:, :, 0].max(1), lm[:, :, 1].max(1)],
                        -1).astype(np.float32) if f else np.zeros((0, 4), np.float32),
    }
    if f == 0:
        out.update(landmarks68=np.zeros((0, 68, 3), np.float32), rotation=np.zeros((0, 3, 3), np.float32),
                   yaw=np.zeros((0,), np.float32), contour_row=np.zeros((0,), np.int32),
                   fit_rmse=np.zeros((0,), np.float32))
        return out
    mesh = lm[:, :N_MESH]
    model_frame = mesh * np.array([1.0, -1.0, -1.0])
    _, rot, _, rmse = fit_similarity(fm.v_template, model_frame)
    rows = yaw_bin(rot.astype(np.float32))
    a = fm.arrays
    faces_idx = np.concatenate([a["dynamic_lmk_faces_idx"][rows],
                                np.broadcast_to(a["lmk_faces_idx"], (f, len(a["lmk_faces_idx"])))], 1)
    bary = np.concatenate([a["dynamic_lmk_bary_coords"][rows],
                           np.broadcast_to(a["lmk_bary_coords"], (f,) + a["lmk_bary_coords"].shape)], 1)
    tri = fm.faces[faces_idx]  # (F, 68, 3) vertex (= MediaPipe) indices
    pts = mesh[np.arange(f)[:, None, None], tri]  # (F, 68, 3 corners, 3 xyz)
    out["landmarks68"] = np.einsum("flk,flkc->flc", bary.astype(np.float64), pts).astype(np.float32)
    out["rotation"] = rot.astype(np.float32)
    out["yaw"] = yaw_degrees(rot.astype(np.float32).astype(np.float64)).astype(np.float32)
    out["contour_row"] = rows.astype(np.int32)
    out["fit_rmse"] = rmse.astype(np.float32)
    return out


_STANDIN = None


def _standin():
    global _STANDIN
    if _STANDIN is None:
        from ..face_model import FaceModel

        _STANDIN = FaceModel.standin()
    return _STANDIN


# ---------------------------------------------------------------------------------------------
# the MediaPipe worker


def find_mediapipe_python(explicit: str | os.PathLike | None = None) -> str:
    """The interpreter that runs ``mp_worker.py``: ``explicit``, else ``$SMIRK_EDGE_MEDIAPIPE_PYTHON``,
    else this interpreter when it can import mediapipe. Raises :class:`MediaPipeUnavailable`."""
    for source, value in (("--mediapipe-python", explicit), (ENV_PYTHON, os.environ.get(ENV_PYTHON))):
        if value:
            p = Path(value).expanduser()
            if not (p.is_file() and os.access(p, os.X_OK)):
                raise MediaPipeUnavailable(f"{source} points to {str(p)!r}, which is not an executable "
                                           f"Python interpreter; {INSTALL_HINT}")
            return str(p)
    if importlib.util.find_spec("mediapipe") is not None:
        return sys.executable
    raise MediaPipeUnavailable(f"annotation needs mediapipe 0.10.21 in some Python interpreter (it pins "
                               f"numpy<2, so it usually lives in its own environment); {INSTALL_HINT}")


class _WorkerDied(Exception):
    pass


class MediaPipeWorker:
    """One ``mp_worker.py`` subprocess. :meth:`annotate` sends one image and waits for its reply.

    Restarted automatically when it dies on an image (that image is reported as an error).
    ``log``: file that receives the worker's stderr (MediaPipe's own logging).
    """

    def __init__(self, python: str, log: str | os.PathLike | None = None):
        self.python = python
        self.log = log
        self.info: dict = {}
        self._proc: subprocess.Popen | None = None
        self._next_id = 0

    def start(self) -> dict:
        err = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self._proc = subprocess.Popen([self.python, "-u", str(WORKER_PATH)], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        except OSError as exc:
            raise MediaPipeUnavailable(f"cannot run {self.python!r}: {exc}; {INSTALL_HINT}") from exc
        finally:
            if self.log:
                err.close()
        line = self._proc.stdout.readline()
        try:
            info = json.loads(line)
        except ValueError:
            info = {"ready": False, "error": f"no handshake (got {line[:200]!r})"}
        if not info.get("ready"):
            self.close()
            tail = self._log_tail()
            raise MediaPipeUnavailable(f"the MediaPipe worker could not start with {self.python!r}: "
                                       f"{info.get('error', 'unknown error')}{tail}; {INSTALL_HINT}")
        if info.get("protocol") != WORKER_PROTOCOL:
            self.close()
            raise MediaPipeUnavailable(f"worker protocol {info.get('protocol')} != {WORKER_PROTOCOL}: "
                                       f"{WORKER_PATH} does not match this smirk-edge")
        self.info = info
        return info

    def _log_tail(self) -> str:
        if not self.log or not Path(self.log).is_file():
            return ""
        text = Path(self.log).read_text(errors="replace").strip().splitlines()[-5:]
        return (" (worker log: " + " | ".join(text) + ")") if text else ""

    def annotate(self, path: str, max_faces: int, pad_retry: bool = True) -> dict:
        """Landmarks of one image: dict with ``width``, ``height``, ``landmarks`` ``(K, 478, 3)``
        float32 pixels (MediaPipe's order), ``padded``, ``error`` (``''`` when readable)."""
        if self._proc is None or self._proc.poll() is not None:
            self.start()
        self._next_id += 1
        req = {"id": self._next_id, "path": path, "max_faces": int(max_faces), "pad_retry": bool(pad_retry)}
        try:
            self._proc.stdin.write(json.dumps(req) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
            if not line:
                raise _WorkerDied()
            rep = json.loads(line)
        except (OSError, ValueError, _WorkerDied):
            code = self._proc.poll()
            self.close()
            return {"width": 0, "height": 0, "padded": False, "landmarks": np.zeros((0, N_MP, 3), np.float32),
                    "error": f"{WORKER_DIED} (exit code {code})"}
        if rep.get("id") != req["id"]:
            self.close()
            raise AnnotationError(f"MediaPipe worker answered request {rep.get('id')} to request {req['id']}")
        k = int(rep.get("faces", 0))
        lm = (np.frombuffer(base64.b64decode(rep["landmarks"]), "<f4").reshape(k, N_MP, 3)
              if k else np.zeros((0, N_MP, 3), np.float32))
        return {"width": int(rep.get("width", 0)), "height": int(rep.get("height", 0)),
                "padded": bool(rep.get("padded", False)), "landmarks": lm, "error": str(rep.get("error", ""))}

    def close(self) -> None:
        p, self._proc = self._proc, None
        if p is None:
            return
        try:
            if p.poll() is None:
                p.stdin.write("\n")
                p.stdin.flush()
                p.stdin.close()
                p.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired, ValueError):
            pass
        if p.poll() is None:
            p.kill()
            p.wait()
        for s in (p.stdout, p.stdin):
            try:
                if s:
                    s.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------
# files, shards and the index


def discover_images(inputs: Sequence[str | os.PathLike], root: str | os.PathLike | None = None,
                    exclude: Sequence[str | os.PathLike] = ()) -> tuple[Path, list[str]]:
    """Image files under ``inputs`` (files are taken as given, folders are walked recursively for
    :data:`IMAGE_EXTENSIONS`), as sorted ``'/'``-separated paths relative to ``root`` (default: the
    common folder of the inputs). Folders in ``exclude`` (e.g. the output) are skipped."""
    if not inputs:
        raise AnnotationError("no input images or folders given")
    paths = [Path(p).expanduser().resolve() for p in inputs]
    for p in paths:
        if not p.exists():
            raise AnnotationError(f"input {str(p)!r} does not exist")
    excl = [Path(e).resolve() for e in exclude]
    if root is None:
        root = Path(os.path.commonpath([str(p if p.is_dir() else p.parent) for p in paths]))
    root = Path(root).expanduser().resolve()
    found: set[str] = set()
    for p in paths:
        if p.is_file():
            files = [p]
        else:
            files = []
            for d, dirs, names in os.walk(p):
                dp = Path(d)
                dirs[:] = sorted(x for x in dirs if not x.startswith(".") and (dp / x).resolve() not in excl)
                files += [dp / n for n in names if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
        for f in files:
            try:
                rel = f.relative_to(root)
            except ValueError:
                raise AnnotationError(f"{str(f)!r} is not under the annotation root {str(root)!r}; "
                                      "pass --root, or annotate it into another output folder") from None
            found.add(rel.as_posix())
    return root, sorted(found)


def read_index(folder: str | os.PathLike) -> dict:
    """The folder's ``index.json`` (format, version, root, options, shards, totals)."""
    p = Path(folder) / "index.json"
    if not p.is_file():
        raise AnnotationError(f"{str(folder)!r} is not an annotation folder (no index.json); "
                              "make one with 'smirk-edge annotate IMAGES -o FOLDER'")
    try:
        idx = json.loads(p.read_text())
    except ValueError as exc:
        raise AnnotationError(f"{p} is not valid JSON: {exc}") from exc
    if idx.get("format") != FORMAT_NAME:
        raise AnnotationError(f"{p} is not a {FORMAT_NAME} index (format={idx.get('format')!r})")
    if int(idx.get("version", -1)) > FORMAT_VERSION:
        raise AnnotationError(f"{p} has format version {idx.get('version')}; this smirk-edge reads up to "
                              f"{FORMAT_VERSION}: upgrade smirk-edge")
    return idx


def _shard_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(SHARD_GLOB))


def _read_shard(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except Exception as exc:  # noqa: BLE001 - any unreadable shard is a format error
        raise AnnotationError(f"cannot read shard {path}: {exc}") from exc


def _shard_paths(path: Path) -> list[str]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return [str(x) for x in z["path"]]
    except Exception as exc:  # noqa: BLE001
        raise AnnotationError(f"cannot read shard {path}: {exc}") from exc


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name("." + path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    _atomic_write_bytes(path, lambda f: np.savez(f, **arrays))


def _write_index(folder: Path, idx: dict) -> None:
    data = (json.dumps(idx, indent=1) + "\n").encode()
    _atomic_write_bytes(folder / "index.json", lambda f: f.write(data))


def _empty_record(max_faces: int) -> dict[str, np.ndarray]:
    f = max_faces
    return {
        "landmarks478": np.full((f, N_MP, 3), np.nan, np.float32),
        "landmarks105": np.full((f, 105, 3), np.nan, np.float32),
        "landmarks68": np.full((f, 68, 3), np.nan, np.float32),
        "box": np.full((f, 4), np.nan, np.float32),
        "rotation": np.full((f, 3, 3), np.nan, np.float32),
        "yaw": np.full((f,), np.nan, np.float32),
        "contour_row": np.full((f,), -1, np.int32),
        "fit_rmse": np.full((f,), np.nan, np.float32),
    }


def _record(rel: str, reply: dict, max_faces: int) -> dict:
    """One image's row of a shard from a worker reply (largest ``max_faces`` faces, by box area)."""
    rec = _empty_record(max_faces)
    lm = np.asarray(reply["landmarks"], np.float32)
    if len(lm):
        area = (lm[:, :, 0].max(1) - lm[:, :, 0].min(1)) * (lm[:, :, 1].max(1) - lm[:, :, 1].min(1))
        lm = lm[np.argsort(-area, kind="stable")[:max_faces]]
        d = derive_landmarks(lm)
        k = len(lm)
        rec["landmarks478"][:k] = lm
        for key in ("landmarks105", "landmarks68", "box", "rotation", "yaw", "contour_row", "fit_rmse"):
            rec[key][:k] = d[key]
    rec.update(path=rel, image_size=(reply["width"], reply["height"]), num_faces=len(lm),
               error=reply["error"], padded=bool(reply["padded"] and len(lm)))
    return rec


def _stack(records: list[dict]) -> dict[str, np.ndarray]:
    records = sorted(records, key=lambda r: r["path"])
    out = {
        "path": np.array([r["path"] for r in records], dtype=np.str_),
        "image_size": np.array([r["image_size"] for r in records], np.int32).reshape(-1, 2),
        "num_faces": np.array([r["num_faces"] for r in records], np.int32),
        "error": np.array([r["error"] for r in records], dtype=np.str_),
        "padded": np.array([r["padded"] for r in records], bool),
    }
    out["found"] = out["num_faces"] > 0
    for key in ("landmarks478", "landmarks105", "landmarks68", "box", "rotation", "yaw", "contour_row", "fit_rmse"):
        out[key] = np.stack([r[key] for r in records])
    if out["path"].size == 0:  # keep a str dtype for empty arrays
        out["path"] = out["path"].astype("<U1")
        out["error"] = out["error"].astype("<U1")
    return out


@dataclass
class AnnotateSummary:
    """What one :func:`annotate` call did. Times in seconds."""

    output: Path
    root: Path
    total: int  # images under the inputs
    skipped: int  # already annotated before this run
    processed: int  # annotated by this run
    found: int  # of processed, with at least one face
    errors: int  # of processed, unreadable
    seconds: float
    interrupted: bool = False
    shards_written: list[str] = field(default_factory=list)

    @property
    def found_rate(self) -> float:
        readable = self.processed - self.errors
        return self.found / readable if readable else float("nan")


def _progress(total: int, enabled: bool):
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(total=total, unit="img", desc="annotate", dynamic_ncols=True, smoothing=0.05)
        except ImportError:
            pass

    class _Null:
        def update(self, n=1):
            pass

        def set_postfix_str(self, s):
            pass

        def close(self):
            pass

    return _Null()


def annotate(inputs: Sequence[str | os.PathLike], output: str | os.PathLike, python: str | None = None,
             workers: int = 1, max_faces: int = 1, shard_size: int = 1000, root: str | os.PathLike | None = None,
             pad_retry: bool = True, progress: bool = True) -> AnnotateSummary:
    """Annotate every image under ``inputs`` into the folder ``output`` (created or resumed).

    Args:
        inputs: image files and/or folders (walked recursively).
        output: annotation folder; images already in its shards are skipped.
        python: interpreter with mediapipe (see :func:`find_mediapipe_python`).
        workers: MediaPipe worker processes running in parallel.
        max_faces: faces kept per image, largest (478-box area) first.
        shard_size: images per shard file.
        root: folder the stored paths are relative to (default: the index's, else the inputs' common folder).
        pad_retry: retry with a black border when no face is found (see ``mp_worker.py``).
        progress: show a progress bar (tqdm).

    Shards are numbered on from the existing ones; within a run images go in sorted path order
    and each shard holds consecutive images of that order. Ctrl-C writes the images finished so
    far as a last shard.
    """
    t_start = time.perf_counter()
    if workers < 1 or max_faces < 1 or shard_size < 1:
        raise AnnotationError("workers, max_faces and shard_size must be >= 1")
    out = Path(output).expanduser().resolve()
    idx = read_index(out) if (out / "index.json").is_file() else None
    if idx is not None:
        if int(idx["max_faces"]) != int(max_faces):
            raise AnnotationError(f"{out} was annotated with max_faces={idx['max_faces']}; resume with the same "
                                  "--max-faces or use a new output folder")
        if root is not None and Path(root).expanduser().resolve() != Path(idx["root"]):
            raise AnnotationError(f"{out} holds paths relative to {idx['root']}, not {root}")
        root = idx["root"]
    root, rels = discover_images(inputs, root, exclude=[out])
    done: set[str] = set()
    shard_files = _shard_files(out) if out.is_dir() else []
    for s in shard_files:
        done.update(_shard_paths(s))
    pending = [r for r in rels if r not in done]
    python = find_mediapipe_python(python)
    out.mkdir(parents=True, exist_ok=True)
    next_shard = max((int(s.stem.split("-")[1]) for s in shard_files), default=-1) + 1
    summary = AnnotateSummary(out, root, len(rels), len(rels) - len(pending), 0, 0, 0, 0.0)

    if idx is None:
        idx = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "root": str(root), "max_faces": int(max_faces),
               "created": _now(), "arrays": ARRAYS, "shards": []}
    if not pending:
        idx = _refresh_index(out, idx, {})
        _write_index(out, idx)
        summary.seconds = time.perf_counter() - t_start
        return summary

    pool: queue.Queue[MediaPipeWorker] = queue.Queue()
    all_workers = [MediaPipeWorker(python, log=out / f".worker-{i}.log") for i in range(workers)]
    for w in all_workers:
        if w.log and Path(w.log).exists():
            Path(w.log).unlink()
    info = all_workers[0].start()
    for w in all_workers[1:]:
        w.start()
    for w in all_workers:
        pool.put(w)
    worker_info = {"mediapipe": info.get("mediapipe"), "numpy": info.get("numpy"), "opencv": info.get("opencv"),
                   "interpreter": python, "pad_retry": bool(pad_retry)}
    from .._version import __version__

    def job(rel: str) -> dict:
        w = pool.get()
        try:
            rep = w.annotate(str(root / rel), max_faces, pad_retry)
        finally:
            pool.put(w)
        return _record(rel, rep, max_faces)

    bar = _progress(len(pending), progress)
    lock = threading.Lock()
    ex = cf.ThreadPoolExecutor(max_workers=workers)
    records: list[dict] = []
    try:
        for start in range(0, len(pending), shard_size):
            chunk = pending[start:start + shard_size]
            records = []
            futures = [ex.submit(job, r) for r in chunk]
            for fut in cf.as_completed(futures):
                rec = fut.result()
                with lock:
                    records.append(rec)
                    summary.processed += 1
                    summary.found += rec["num_faces"] > 0
                    summary.errors += bool(rec["error"])
                bar.update(1)
                bar.set_postfix_str(f"found {summary.found}/{summary.processed - summary.errors}")
            name = _commit(out, next_shard, records, idx, worker_info, __version__)
            summary.shards_written.append(name)
            next_shard += 1
            records = []
    except KeyboardInterrupt:
        summary.interrupted = True
        ex.shutdown(wait=False, cancel_futures=True)
        for w in all_workers:
            w.close()
        # Ctrl-C also reaches the workers: an image whose worker died of it is not a real failure
        keep = [r for r in records if not r["error"].startswith(WORKER_DIED)]
        if keep:
            summary.shards_written.append(_commit(out, next_shard, keep, idx, worker_info, __version__))
        raise
    finally:
        bar.close()
        ex.shutdown(wait=True, cancel_futures=True)
        for w in all_workers:
            w.close()
        summary.seconds = time.perf_counter() - t_start
    return summary


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _commit(out: Path, number: int, records: list[dict], idx: dict, worker_info: dict, version: str) -> str:
    name = f"shard-{number:05d}.npz"
    arrays = _stack(records)
    _write_shard(out / name, arrays)
    entry = {"file": name, "images": int(len(arrays["path"])), "found": int(arrays["found"].sum()),
             "errors": int((arrays["error"] != "").sum()), "written": _now(), "smirk_edge": version, **worker_info}
    idx.update(_refresh_index(out, idx, {name: entry}))
    _write_index(out, idx)
    return name


def _refresh_index(out: Path, idx: dict, new: dict[str, dict]) -> dict:
    """Index with one entry per shard file on disk (entries of unknown shards are rebuilt)."""
    known = {s["file"]: s for s in idx.get("shards", [])}
    known.update(new)
    shards = []
    for p in _shard_files(out):
        e = known.get(p.name)
        if e is None:
            a = _read_shard(p)
            e = {"file": p.name, "images": int(len(a["path"])), "found": int(a["found"].sum()),
                 "errors": int((a["error"] != "").sum())}
        shards.append(e)
    idx = dict(idx)
    idx["shards"] = shards
    idx["totals"] = {k: int(sum(s[k] for s in shards)) for k in ("images", "found", "errors")}
    idx["updated"] = _now()
    return idx


# ---------------------------------------------------------------------------------------------
# reading


def load_annotations(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every image of an annotation folder as one dict of arrays (see :data:`ARRAYS`), sorted by path.

    ``N`` images, ``F`` = the folder's ``max_faces``; faces are largest first, missing ones NaN / -1.
    If an image appears in several shards the one in the highest-numbered shard wins.
    """
    folder = Path(folder)
    read_index(folder)
    parts = [_read_shard(p) for p in _shard_files(folder)]
    if not parts:
        raise AnnotationError(f"{folder} has no shards yet")
    keys = parts[0].keys()
    data = {k: np.concatenate([p[k] for p in parts]) for k in keys}
    paths = data["path"]
    # last occurrence wins, then sort by path
    rev_unique = np.unique(paths[::-1], return_index=True)[1]
    keep = len(paths) - 1 - rev_unique
    order = keep[np.argsort(paths[keep], kind="stable")]
    return {k: v[order] for k, v in data.items()}


@dataclass
class ImageAnnotation:
    """One image of an annotation folder; ``K`` = faces found (largest first), pixels throughout."""

    path: str
    width: int
    height: int
    error: str
    padded: bool
    landmarks478: np.ndarray  # (K, 478, 3)
    landmarks105: np.ndarray  # (K, 105, 3)
    landmarks68: np.ndarray  # (K, 68, 3)
    box: np.ndarray  # (K, 4)
    rotation: np.ndarray  # (K, 3, 3)
    yaw: np.ndarray  # (K,) degrees

    @property
    def found(self) -> bool:
        return len(self.landmarks478) > 0


def iter_annotations(folder: str | os.PathLike | dict) -> Iterator[ImageAnnotation]:
    """Iterate the images of an annotation folder (or a :func:`load_annotations` dict) in path order."""
    data = folder if isinstance(folder, dict) else load_annotations(folder)
    for i in range(len(data["path"])):
        k = int(data["num_faces"][i])
        w, h = (int(v) for v in data["image_size"][i])
        yield ImageAnnotation(str(data["path"][i]), w, h, str(data["error"][i]), bool(data["padded"][i]),
                              data["landmarks478"][i, :k], data["landmarks105"][i, :k], data["landmarks68"][i, :k],
                              data["box"][i, :k], data["rotation"][i, :k], data["yaw"][i, :k])


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``smirk-edge annotate``."""
    p.add_argument("images", nargs="+", metavar="IMAGES", help="image files and/or folders (walked recursively)")
    p.add_argument("-o", "--output", required=True, metavar="ANNOTATIONS",
                   help="annotation folder (created; an existing one is resumed)")
    p.add_argument("--mediapipe-python", metavar="PATH", default=None,
                   help=f"Python interpreter with mediapipe 0.10.21 (default: ${ENV_PYTHON}, else this one "
                        "if it has mediapipe)")
    p.add_argument("--workers", type=int, default=1, metavar="N", help="MediaPipe processes in parallel (default 1)")
    p.add_argument("--max-faces", type=int, default=1, metavar="N",
                   help="faces kept per image, largest first (default 1)")
    p.add_argument("--shard-size", type=int, default=1000, metavar="N", help="images per shard file (default 1000)")
    p.add_argument("--root", default=None, metavar="DIR",
                   help="store paths relative to DIR (default: the inputs' common folder)")
    p.add_argument("--no-pad-retry", action="store_true",
                   help="do not retry undetected faces on a black-padded image")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``smirk-edge annotate``; prints a one-line summary. Exit code 0, or 130 on Ctrl-C."""
    try:
        s = annotate(args.images, args.output, python=args.mediapipe_python, workers=args.workers,
                     max_faces=args.max_faces, shard_size=args.shard_size, root=args.root,
                     pad_retry=not args.no_pad_retry, progress=not args.no_progress)
    except KeyboardInterrupt:
        print("interrupted: finished images were saved; run the same command again to resume", file=sys.stderr)
        return 130
    rate = f"{100 * s.found_rate:.1f}%" if s.processed > s.errors else "-"
    print(f"{s.output}: {s.total} images under {s.root}; {s.skipped} already annotated, {s.processed} annotated "
          f"now in {s.seconds:.1f} s: faces found in {s.found} ({rate} of readable), {s.errors} unreadable")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smirk_edge.training.annotate`` (same as ``smirk-edge annotate``)."""
    from smirk_edge.cli import run_command

    return run_command("annotate", argv)


if __name__ == "__main__":
    sys.exit(main())
