"""Hostile inputs and a peak-memory harness for them.

Generators (also used by ``tests/test_hostile_inputs.py``) build decompression bombs, headers that
lie, archives that lie, pickles of shared-reference lists and deep or huge-number manifests, all
without allocating what they declare. The harness runs each case in its own subprocess (with an
address-space limit as a safety net), records ``ru_maxrss`` and the outcome, and writes JSON rows::

    python -m smirk_edge.benchmarks.hostile --out hostile_memory.json

Not a timed test: the numbers go into docs/hardening.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import platform
import struct
import subprocess
import sys
import tempfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np


# ----------------------------------------------------------------------------- images
def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def png_bomb(width: int, height: int, depth: int = 8, color: int = 0) -> bytes:
    """A valid PNG of ``width x height`` zeros (color type ``color``, ``depth`` bits), streamed: a
    32000 x 32000 one is about 1 MB and never exists decoded here."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = b"\x00" * (1 + width * channels * depth // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def _small(ext: str, shape=(24, 32, 3)) -> bytes:
    import cv2

    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(ext, (rng.random(shape) * 255).astype(np.uint8))
    assert ok
    return buf.tobytes()


def lying_header(fmt: str, width: int, height: int) -> bytes:
    """A small real image of ``fmt`` whose header is edited to declare ``width x height``."""
    if fmt == "png":
        data = bytearray(_small(".png"))
        struct.pack_into(">II", data, 16, width, height)
        struct.pack_into(">I", data, 29, zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
        return bytes(data)
    if fmt == "jpeg":
        data = bytearray(_small(".jpg"))
        i = 2
        while data[i + 1] not in (0xC0, 0xC2):
            i += 2 + struct.unpack_from(">H", data, i + 2)[0]
        struct.pack_into(">HH", data, i + 5, min(height, 65535), min(width, 65535))
        return bytes(data)
    if fmt == "bmp":
        data = bytearray(_small(".bmp"))
        struct.pack_into("<ii", data, 18, width, height)
        return bytes(data)
    if fmt == "webp":
        data = bytearray(_small(".webp"))
        kind = bytes(data[12:16])
        if kind == b"VP8L":
            bits = (min(width, 16384) - 1) | ((min(height, 16384) - 1) << 14)
            struct.pack_into("<I", data, 21, bits | (struct.unpack_from("<I", data, 21)[0] & ~0x0FFFFFFF))
        elif kind == b"VP8 ":
            struct.pack_into("<HH", data, 26, min(width, 16383), min(height, 16383))
        else:
            raise ValueError(f"unexpected WebP chunk {kind!r}")
        return bytes(data)
    if fmt == "tiff":
        import cv2

        ok, buf = cv2.imencode(".tiff", np.zeros((24, 32, 3), np.uint8))
        data = bytearray(buf.tobytes())
        e = "<" if data[:2] == b"II" else ">"
        ifd = struct.unpack_from(e + "I", data, 4)[0]
        n = struct.unpack_from(e + "H", data, ifd)[0]
        for k in range(n):
            at = ifd + 2 + 12 * k
            tag, typ = struct.unpack_from(e + "HH", data, at)
            if tag in (256, 257):
                struct.pack_into(e + "HHI", data, at + 2, 4, 1, 0)
                struct.pack_into(e + "I", data, at + 8, width if tag == 256 else height)
        return bytes(data)
    if fmt == "pnm":
        return f"P6\n{width} {height}\n255\n".encode() + b"\x00" * 64
    raise ValueError(fmt)


# ----------------------------------------------------------------------------- archives
def _npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    h = repr({"descr": descr, "fortran_order": False, "shape": tuple(shape)}).encode("latin1")
    h += b" " * (63 - (len(h) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h


def npz_lying_header(shape=(100_000, 100_000), payload: int = 1 << 20, name: str = "shapedirs") -> bytes:
    """An ``.npz`` whose member declares ``shape`` but holds ``payload`` bytes (plus a valid
    ``format`` entry so the face-model reader gets that far)."""
    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # a duplicate entry name is one of the lies
        zf.writestr("format.npy", _npy_header((), "<U16") + "smirk-edge-face".ljust(16).encode("utf-32-le")[:64])
        zf.writestr(f"{name}.npy", _npy_header(shape) + b"\x00" * payload)
    return buf.getvalue()


def npz_zip_bomb(declared_bytes: int = 1 << 30, name: str = "shapedirs") -> bytes:
    """A valid ``.npz`` whose member really holds ``declared_bytes`` of zeros (about 1 MB per GB)."""
    n = declared_bytes // 4
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"{name}.npy", "w", force_zip64=True) as fh:
            fh.write(_npy_header((n,)))
            zero = b"\x00" * (1 << 22)
            left = n * 4
            while left > 0:
                fh.write(zero[:min(left, len(zero))])
                left -= len(zero)
    return buf.getvalue()


def flame_dict(**override) -> dict:
    """A FLAME ``generic_model.pkl`` dict of small plain lists (valid shapes for 4 vertices)."""
    V = 4
    d = {"v_template": [[0.0, 0.0, 0.0]] * V, "shapedirs": [[[0.0] * 400] * 3] * V,
         "posedirs": [[[0.0] * 36] * 3] * V, "weights": [[0.2] * 5] * V,
         "kintree_table": [[4294967295, 0, 1, 1, 1], [0, 1, 2, 3, 4]], "f": [[0, 1, 2], [1, 2, 3]],
         "J_regressor": [[0.25] * V] * 5}
    d.update(override)
    return d


def pickle_shared_lists(vertices: int = 5023, columns: int = 100_000) -> bytes:
    """A FLAME pickle whose ``shapedirs`` is ``[[[0.0] * columns] * 3] * vertices``: shared
    references, so the file is small while the array it describes is ``vertices*3*columns`` floats."""
    row = [0.0] * columns
    return pickle.dumps(flame_dict(v_template=[[0.0, 0.0, 0.0]] * vertices,
                                   shapedirs=[[row] * 3] * vertices), protocol=2)


def pickle_ragged() -> bytes:
    return pickle.dumps(flame_dict(v_template=[[0.0, 0.0, 0.0], [0.0, 0.0], [0.0, 0.0, 0.0], [0.0]]), protocol=2)


# ----------------------------------------------------------------------------- manifests
def manifest_deep(depth: int = 100_000) -> bytes:
    return b'{"schema": "smirk-edge-bundle", "schema_version": 1, "metadata": ' + b"[" * depth + b"]" * depth + b"}"


def manifest_long_number(digits: int = 5000) -> bytes:
    return b'{"schema": "smirk-edge-bundle", "schema_version": ' + b"9" * digits + b', "artifacts": []}'


# ----------------------------------------------------------------------------- file names
NON_UTF8_NAMES = [b"\xff\xfe.jpg", b"caf\xe9.jpg", b"\xed\xa0\x80surrogate.png", b"a\x80b\xc0.jpeg",
                  b"summary.jpg", b"\xc3.png"]


# ----------------------------------------------------------------------------- harness
def _cases(work: str | Path, make: bool = True) -> dict[str, tuple[str, str]]:
    """name -> (what the child runs, input file), writing the inputs into ``work`` when ``make``."""
    work = Path(work)

    def put(name: str, data) -> str:
        p = work / name
        if make:
            p.write_bytes(data())
        return str(p)

    return {
        "png 32000x32000 8-bit grey, valid data (bomb)": ("image", put("bomb8.png", lambda: png_bomb(32000, 32000))),
        "png 12000x12000 16-bit RGBA, valid data (bomb)": ("image", put("bomb16.png", lambda: png_bomb(12000, 12000, 16, 6))),
        "png header 32000x32000 (lies)": ("image", put("lie.png", lambda: lying_header("png", 32000, 32000))),
        "jpeg header 65000x65000 (lies)": ("image", put("lie.jpg", lambda: lying_header("jpeg", 65000, 65000))),
        "webp header 16383x16383 (lies)": ("image", put("lie.webp", lambda: lying_header("webp", 16383, 16383))),
        "tiff header 30000x30000 (lies)": ("image", put("lie.tiff", lambda: lying_header("tiff", 30000, 30000))),
        "bmp header 30000x30000 (lies)": ("image", put("lie.bmp", lambda: lying_header("bmp", 30000, 30000))),
        "face-model npz member declares (100000, 100000) in 8 MB": (
            "face_model", put("lie.npz", lambda: npz_lying_header(payload=8 << 20))),
        "face-model npz zip bomb (2 GB of zeros in ~2 MB)": ("face_model", put("bomb.npz", lambda: npz_zip_bomb(2 << 30))),
        "FLAME pickle of shared-reference lists (12 GB declared)": (
            "flame", put("shared.pkl", lambda: pickle_shared_lists())),
        "FLAME pickle with ragged lists": ("flame", put("ragged.pkl", lambda: pickle_ragged())),
        "manifest nested 100000 deep": ("manifest", put("deep.json", lambda: manifest_deep())),
        "manifest with a 5000-digit number": ("manifest", put("number.json", lambda: manifest_long_number())),
        "largest accepted image: 8900x8900 RGB PNG, full reconstruction": (
            "reconstruct", put("big.png", lambda: _big_png(8900, 8900))),
        "reconstruct CLI: folder of 3 photos, 2 bombs, a non-UTF-8 name, summary.jpg, a broken file": (
            "cli", _mixed_folder(work / "mixed", make)),
        "uint16 RGBA frame 8000x5000 to BGR uint8 (as_bgr_uint8)": ("frame16", ""),
        "float32 RGB frame 8000x5000 to BGR uint8 (as_bgr_uint8)": ("frame32", ""),
    }


def _mixed_folder(folder: Path, make: bool) -> str:
    if make:
        import cv2

        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)

        def photo(seed: int) -> bytes:
            img = cv2.GaussianBlur((np.random.default_rng(seed).random((960, 1280, 3)) * 255).astype(np.uint8),
                                   (15, 15), 5)
            return cv2.imencode(".jpg", img)[1].tobytes()

        for k in range(3):
            (folder / f"photo{k}.jpg").write_bytes(photo(k))
        (folder / "bomb8.png").write_bytes(png_bomb(32000, 32000))
        (folder / "lie.jpg").write_bytes(lying_header("jpeg", 30000, 30000))
        with open(os.path.join(os.fsencode(folder), b"\xff\xfe caf\xe9.jpg"), "wb") as f:
            f.write(photo(7))
        (folder / "summary.jpg").write_bytes(photo(8))
        (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff" + rng.bytes(100))
    return str(folder)


def _big_png(w: int, h: int) -> bytes:
    import cv2

    y, x = np.mgrid[0:h:64, 0:w:64]
    small = np.dstack([(x * 255 // w), (y * 255 // h), ((x + y) * 127 // (w + h))]).astype(np.uint8)
    ok, buf = cv2.imencode(".png", cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))
    return buf.tobytes()


def _peak_mib() -> float:
    """This process's peak resident set: VmHWM (Linux; reset by exec, unlike ru_maxrss), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def run_case(kind: str, path: str) -> dict:
    """Child side: run one hostile input through the SDK; return the outcome and its peak RSS."""

    import smirk_edge  # noqa: F401
    from smirk_edge import image as im

    base = _peak_mib()
    t = time.perf_counter()
    outcome = "accepted"
    try:
        if kind == "image":
            im.load_image(path)
        elif kind == "face_model":
            from smirk_edge.face_model import FaceModel

            FaceModel.load(path)
        elif kind == "flame":
            from smirk_edge.face_model.convert import read_flame_model

            read_flame_model(path)
        elif kind == "manifest":
            from smirk_edge.bundle import parse_manifest_text

            parse_manifest_text(Path(path).read_bytes(), path)
        elif kind == "reconstruct":
            from smirk_edge.draw import draw
            from smirk_edge.reconstructor import Reconstructor

            with Reconstructor(backend="onnxruntime", threads=1) as rec:
                img = im.load_image(path)
                faces = rec(img)
                im.encode_image(draw(img, faces), ".jpg")
        elif kind == "cli":
            from smirk_edge.cli import main as cli_main

            with tempfile.TemporaryDirectory() as out:
                code = cli_main(["reconstruct", path, "-o", out, "--backend", "onnxruntime", "--threads", "1",
                                 "--quiet"])
                summary = json.loads((Path(out) / "summary.json").read_text())
            outcome = (f"exit {code}: {len(summary['results'])} results, {len(summary['failed'])} reported "
                       f"failures of {summary['inputs']} inputs")
        elif kind in ("frame16", "frame32"):
            if kind == "frame16":
                frame = np.full((5000, 8000, 4), 40000, np.uint16)
            else:
                frame = np.full((5000, 8000, 3), 0.5, np.float32)
            base = _peak_mib()
            base_input = frame.nbytes / 2**20
            im.as_bgr_uint8(frame)
            outcome = f"accepted (input {base_input:.0f} MiB)"
    except Exception as exc:  # noqa: BLE001 - the outcome is the point
        outcome = f"{type(exc).__name__}: {str(exc)[:160]}"
    import resource

    return {"outcome": outcome, "seconds": round(time.perf_counter() - t, 3), "peak_rss_mib": _peak_mib(),
            "rss_before_mib": base, "ru_maxrss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _child(kind: str, path: str, limit_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    print(json.dumps(run_case(kind, path)))


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m smirk_edge.benchmarks.hostile", description=__doc__.splitlines()[0])
    p.add_argument("--out", default="hostile_memory.json", help="JSON rows to write")
    p.add_argument("--limit-gb", type=float, default=4.0, help="address-space limit of each child (safety net)")
    p.add_argument("--only", default=None, help="run only cases whose name contains this")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="smirk-hostile-") as d:
        # the inputs are made in a child too, so that this process (whose peak RSS children inherit
        # in ru_maxrss) stays small
        subprocess.run([sys.executable, "-c", f"from smirk_edge.benchmarks.hostile import _cases; _cases({d!r})"],
                       check=True)
        cases = _cases(Path(d), make=False)
        for name, (kind, path) in cases.items():
            if args.only and args.only not in name:
                continue
            code = (f"from smirk_edge.benchmarks.hostile import _child; "
                    f"_child({kind!r}, {path!r}, {int(args.limit_gb * 2**30)})")
            proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            try:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            except (IndexError, json.JSONDecodeError):
                row = {"outcome": f"child died (exit {proc.returncode}): {proc.stderr[-300:]}"}
            size = (sum(f.stat().st_size for f in Path(path).iterdir()) if path and os.path.isdir(path)
                    else os.path.getsize(path) if path else 0)
            row = {"case": name, "input_bytes": size, **row}
            print(json.dumps(row), flush=True)
            rows.append(row)
    doc = {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version(),
           "numpy": np.__version__, "rows": rows}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
