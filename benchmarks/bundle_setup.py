"""The benchmark bundle: the full-size SMIRK encoder with random weights, exported and gated.

Latency does not depend on the weights, so without ``--bundle`` the harness measures a
random-weight full encoder (:func:`smirk_edge.runtimes.torch_encoder.random_encoder`: SMIRK's
head initialisation, seed 0). :func:`build_bench_bundle` makes its bundle once and reuses it, through
the public export entry point only (:func:`smirk_edge.export.export_bundle`, what
``smirk-edge export`` runs): a checkpoint of that encoder in the official layout becomes ONNX
fp32 + int8 and OpenVINO IR fp32 + int8, gated against fp32 torch on held-back real face crops of
../shared/data/faces/utkface (``allow_degraded``: random weights may fail a gate; the numbers are
kept in ``attrs["accuracy"]``).

Without those photos, or without the ``export`` extra, there is no benchmark bundle: the error
says so, and ``--bundle DIR`` measures any bundle (one from ``smirk-edge export``, the default
model's).

The manifest's metadata says ``weights: "random ..."`` so every row and the report say so.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

WEIGHTS_NOTE = "random (SMIRK head initialisation, seed 0): no trained demo model yet"
BENCH_FORMATS = ("onnx", "openvino")
BENCH_PRECISIONS = ("fp32", "int8")


def calibration_photos() -> Path | None:
    """The face photos the benchmark bundle is calibrated and gated on, when the shared data has them."""
    from .inputs import data_root

    root = data_root()
    folder = None if root is None else root / "faces" / "utkface"
    return folder if folder is not None and folder.is_dir() else None


def build_bench_bundle(root: str | Path, variant: str = "full", log: Callable[[str], None] = print,
                       rebuild: bool = False):
    """The benchmark bundle in ``root``: reused when its manifest checks out, else exported.

    Raises:
        InputError: no calibration photos (see the module docstring).
        EngineUnavailable: the export toolchain is not installed (the message names the extra).
    """
    from smirk_edge.bundle import Bundle, BundleWriter
    from smirk_edge.errors import BundleError, InputError

    root = Path(root)
    if (root / "manifest.json").is_file() and not rebuild:
        try:
            b = Bundle(root)
            b.verify_all()
            log(f"[bench] reusing benchmark bundle {root}")
            return b
        except BundleError as exc:
            log(f"[bench] rebuilding the benchmark bundle: {exc}")
    calib = calibration_photos()
    if calib is None:
        raise InputError("the benchmark bundle is exported with the accuracy gate, which needs real face photos "
                         "(../shared/data/faces/utkface or $SMIRK_EDGE_DATA/faces/utkface; none found): pass "
                         "--bundle DIR to measure a bundle made by smirk-edge export")
    from smirk_edge.export import ExportOptions, export_bundle
    from smirk_edge.runtimes.torch_encoder import random_encoder
    from smirk_edge.training import save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_checkpoint(Path(tmp) / "random.pt", random_encoder(variant, seed=0),
                               meta={"weights": WEIGHTS_NOTE})
        log("[bench] building the benchmark bundle with smirk-edge export (a few minutes, once)")
        export_bundle(ExportOptions(checkpoint=ckpt, output=root, calib=calib, formats=BENCH_FORMATS,
                                    precisions=BENCH_PRECISIONS, gate_count=200, calib_count=300,
                                    allow_degraded=True, progress=False))
    w = BundleWriter(root)
    w.metadata["weights"] = WEIGHTS_NOTE
    return w.write()
