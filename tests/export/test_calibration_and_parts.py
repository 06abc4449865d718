"""Calibration crops and adapters, the decoder export, metadata, the gate's arithmetic, the CLI."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from smirk_edge.errors import InputError


def test_real_photos_become_sdk_crops(shared_data):
    from smirk_edge.export.calibration import collect_crops

    cs = collect_crops(shared_data / "faces" / "utkface", limit=12, progress=False)
    assert cs.crops.shape == (12, 224, 224, 3) and cs.crops.dtype == np.uint8
    assert cs.method in ("detect", "centre", "mixed") and len(set(cs.sources)) == 12
    again = collect_crops(shared_data / "faces" / "utkface", limit=12, progress=False)
    assert again.sources == cs.sources  # seeded order: the held-back split is reproducible
    held, rest = cs.split(5)
    assert len(held) == 5 and len(rest) == 7 and not set(held.sources) & set(rest.sources)


def test_centre_box_fallback(tmp_path):
    import cv2

    from smirk_edge.crop import crop_from_box
    from smirk_edge.export.calibration import CENTRE_BOX_FRACTION, centre_box, collect_crops

    img = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cs = collect_crops(tmp_path, face="centre", progress=False)
    assert cs.method == "centre"
    np.testing.assert_array_equal(cs.crops[0], crop_from_box(centre_box(200, 200)).warp(img))
    box = centre_box(200, 200)
    assert box[2] - box[0] == pytest.approx(CENTRE_BOX_FRACTION * 200)
    # a finder that never finds a face: skipped, or centred on request
    with pytest.raises(InputError, match="no face crops"):
        collect_crops(tmp_path, finder=lambda im: None, progress=False)
    assert len(collect_crops(tmp_path, finder=lambda im: None, no_face="centre", progress=False)) == 1
    with pytest.raises(InputError, match="not found"):
        collect_crops(tmp_path / "missing")


def test_one_contract_two_adapters():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("nncf", reason="nncf not installed (pip install 'smirk-edge[export]')")
    from smirk_edge.export.calibration import nncf_dataset, ort_reader, synthetic_face_crops

    feeds = synthetic_face_crops(5).feeds(batch=2)
    assert len(feeds) == 3 and feeds[2]["image"].shape == (1, 3, 224, 224)
    reader = ort_reader(feeds)
    got = []
    while (item := reader.get_next()) is not None:
        got.append(item["image"])
    reader.rewind()
    assert reader.get_next() is not None
    ds = nncf_dataset(feeds)
    via_nncf = [d["image"] for d in ds.get_inference_data()]
    assert len(got) == len(via_nncf) == 3
    for a, b in zip(got, via_nncf):
        np.testing.assert_array_equal(a, b)


def test_small_calibration_set_warns():
    from smirk_edge.export.calibration import CalibrationWarning, warn_if_small

    with pytest.warns(CalibrationWarning, match="300"):
        warn_if_small(120)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warn_if_small(300)


def test_metadata_outputs_match_the_encoder():
    pytest.importorskip("torch")
    from smirk_edge.export.metadata import OUTPUTS, flatten, model_metadata, unflatten
    from smirk_edge.training.encoder import OUTPUT_NAMES, OUTPUT_WIDTHS

    assert tuple(n for n, _, _ in OUTPUTS) == OUTPUT_NAMES
    assert {n: w for n, w, _ in OUTPUTS} == OUTPUT_WIDTHS
    meta = model_metadata(encoder_variant="full", checkpoint_sha256="a" * 64, face_model_id="x")
    assert unflatten(flatten(meta, "fp16")) == {**meta, "precision": "fp16"}


def test_decoder_graph_is_finite_at_zero_rotation(tmp_path):
    """Regression: the onnxscript optimizer drops Rodrigues' ``+ 1e-8`` and zero rotations became NaN."""
    pytest.importorskip("torch")
    from factories import random_face_model_arrays, random_params

    from smirk_edge.export.onnx_export import export_decoder
    from smirk_edge.face_model import FaceModel
    from smirk_edge.runtimes import make_runner
    from smirk_edge.training.face_model import FaceModelLayer

    arrays = random_face_model_arrays()
    d = export_decoder(FaceModelLayer(arrays), tmp_path / "decoder.onnx")
    p = random_params(3, seed=2)
    p["pose"][0] = 0.0
    p["jaw"][1] = 0.0
    with make_runner("onnxruntime", d.path) as r:
        out = r.infer({k: p[k] for k in ("shape", "expression", "pose", "jaw", "eyelid")})
    geo = FaceModel(arrays).decode(**p)
    for k in ("vertices", "landmarks68", "landmarks105"):
        assert np.all(np.isfinite(out[k]))
        np.testing.assert_allclose(out[k], getattr(geo, k), atol=1e-6)


def test_gate_arithmetic():
    from factories import random_face_model_arrays

    from smirk_edge.export.gate import DEFAULT_THRESHOLDS, Comparator, Thresholds, check
    from smirk_edge.face_model import FaceModel

    fm = FaceModel(random_face_model_arrays())
    rng = np.random.default_rng(0)
    n = 10
    ref = {"pose": rng.normal(0, 0.2, (n, 3)), "cam": np.tile([7.0, 0.0, 0.0], (n, 1)) + rng.normal(0, 0.1, (n, 3)),
           "shape": rng.normal(0, 1, (n, 300)), "expression": rng.normal(0, 1, (n, 50)),
           "eyelid": rng.uniform(0, 1, (n, 2)), "jaw": rng.uniform(0, 0.2, (n, 3))}
    ref = {k: v.astype(np.float32) for k, v in ref.items()}
    cmp = Comparator(np.zeros((n, 3, 224, 224), np.float32), fm)
    cmp.set_reference("ref", ref)
    same = cmp.compare("same", ref, "fp32")
    assert same.passed and same.metrics["lmk_mean_px"] == 0.0
    # shifting tx by d moves every landmark by s * d * 112 px (s ~ 7): 0.0005 -> ~0.39 px, 0.001 -> ~0.78 px
    s = float(np.mean(ref["cam"][:, 0]))
    small = cmp.compare("small", dict(ref, cam=ref["cam"] + np.array([0, 0.0005, 0], np.float32)), "int8")
    large = cmp.compare("large", dict(ref, cam=ref["cam"] + np.array([0, 0.001, 0], np.float32)), "int8")
    assert small.metrics["lmk_mean_px"] == pytest.approx(s * 0.056, rel=2e-2) and small.passed
    assert large.metrics["lmk_mean_px"] == pytest.approx(s * 0.112, rel=2e-2) and not large.passed
    assert large.failures[0].startswith("lmk_mean_px = 0.7")
    assert check({"lmk_mean_px": 0.6}, DEFAULT_THRESHOLDS["int8"]) == ["lmk_mean_px = 0.6px > 0.5px"]
    assert check({"lmk_mean_px": float("nan")}, Thresholds(lmk_mean_px=1.0))  # NaN fails


def test_export_cli_arguments(capsys):
    pytest.importorskip("torch")
    from smirk_edge.export.cli import export_main

    with pytest.raises(SystemExit) as exc:
        export_main(["--checkpoint", "x.pt", "-o", "out"])  # --calib is required
    assert exc.value.code == 2
    with pytest.raises(SystemExit):
        export_main(["--checkpoint", "x.pt", "-o", "out", "--calib", ".", "--precisions", "fp64"])
    assert export_main(["--checkpoint", "missing.pt", "-o", "out", "--calib", "."]) == 1
    assert "checkpoint not found" in capsys.readouterr().err


def test_jittered_crops_of_the_shipped_portrait_are_varied_and_seeded():
    from importlib import resources

    from smirk_edge.errors import InputError
    from smirk_edge.export.calibration import jittered_crops

    photo = Path(str(resources.files("smirk_edge.assets"))) / "examples" / "astronaut.jpg"
    a = jittered_crops([photo], per_image=4, seed=3)
    b = jittered_crops([photo], per_image=4, seed=3)
    assert len(a) == 4 and a.sources == [f"astronaut.jpg#{k}" for k in range(4)]
    np.testing.assert_array_equal(a.crops, b.crops)
    assert all(np.abs(a.crops[0].astype(int) - a.crops[k]).mean() > 5 for k in (1, 2, 3)), "crops must differ"
    # the plain crop has the face in the middle: skin tones dominate the centre patch
    centre = a.crops[0][80:144, 80:144].reshape(-1, 3).mean(0)
    assert centre[2] > centre[0], "the centre of the first crop is the (reddish) face, not the background"
    with pytest.raises(InputError, match="cannot read"):
        jittered_crops([photo.with_name("missing.jpg")])
