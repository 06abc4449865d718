"""Mesh files: Wavefront OBJ and binary little-endian PLY (vertices + triangles)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError


def write_mesh(path: str | os.PathLike, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write ``vertices (V, 3)`` and ``faces (F, 3)`` (0-based) to ``path`` (.obj or .ply)."""
    path = Path(path)
    v = np.asarray(vertices, np.float32)
    f = np.asarray(faces, np.int64)
    if v.ndim != 2 or v.shape[1] != 3 or f.ndim != 2 or f.shape[1] != 3:
        raise InputError(f"mesh needs vertices (V, 3) and faces (F, 3), got {v.shape} and {f.shape}")
    suffix = path.suffix.lower()
    if suffix not in (".obj", ".ply"):
        raise InputError(f"mesh file must end in .obj or .ply, got {path.name}")
    from .fileio import atomic_file

    with atomic_file(path) as tmp:
        _write(tmp, suffix, v, f)
    return path


def _write(path: Path, suffix: str, v: np.ndarray, f: np.ndarray) -> None:
    if suffix == ".obj":
        with open(path, "w", encoding="ascii") as fh:
            fh.write("# smirk-edge mesh\n")
            np.savetxt(fh, v, fmt="v %.6f %.6f %.6f")
            np.savetxt(fh, f + 1, fmt="f %d %d %d")
    elif suffix == ".ply":
        header = (f"ply\nformat binary_little_endian 1.0\ncomment smirk-edge mesh\nelement vertex {len(v)}\n"
                  "property float x\nproperty float y\nproperty float z\n"
                  f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n")
        tri = np.zeros(len(f), dtype=[("n", "u1"), ("i", "<i4", (3,))])
        tri["n"] = 3
        tri["i"] = f
        with open(path, "wb") as fh:
            fh.write(header.encode("ascii"))
            fh.write(v.astype("<f4").tobytes())
            fh.write(tri.tobytes())


def read_mesh(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read back a mesh written by :func:`write_mesh` (for tests and tools)."""
    path = Path(path)
    if path.suffix.lower() == ".obj":
        v, f = [], []
        for line in path.read_text().splitlines():
            if line.startswith("v "):
                v.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                f.append([int(x.split("/")[0]) - 1 for x in line.split()[1:4]])
        return np.array(v, np.float32), np.array(f, np.int64)
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    v = np.frombuffer(data, "<f4", nv * 3, end).reshape(nv, 3)
    tri = np.frombuffer(data, [("n", "u1"), ("i", "<i4", (3,))], nf, end + nv * 12)
    return v.copy(), tri["i"].astype(np.int64)
