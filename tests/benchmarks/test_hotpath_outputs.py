"""The hot-path probe ``outputs`` times variants that make the same faces (not timings)."""

from __future__ import annotations

import numpy as np

from smirk_edge.benchmarks.hotpath import _outputs_probe, _time_interleaved
from smirk_edge.crop import crop_from_box
from smirk_edge.face_model import FaceModel


def test_outputs_probe_variants_agree():
    fm = FaceModel.standin()
    rng = np.random.default_rng(0)
    params = {"pose": np.array([[0.1, 0.3, 0.0]], np.float32), "cam": np.array([[9.0, 0.0, 0.01]], np.float32),
              "shape": rng.standard_normal((1, 300)).astype(np.float32) * 0.5,
              "expression": rng.standard_normal((1, 50)).astype(np.float32) * 0.5,
              "eyelid": np.array([[0.2, 0.3]], np.float32), "jaw": np.array([[0.1, 0.0, 0.0]], np.float32)}
    variants = _outputs_probe(fm, params, crop_from_box(np.array([500.0, 200.0, 700.0, 450.0])))
    assert len(variants) == 4
    eager = next(iter(variants.values()))()[0]
    from smirk_edge import pipeline as P

    stages = P.Stages(None, None, fm, P.CropPolicy())  # type: ignore[arg-type]
    crops = P.Crops([P.CropTransform(eager.crop_matrix)], np.zeros((1, 3, 1, 1), np.float32))
    lazy = stages.faces(params, crops, np.zeros((1, 4)), np.ones(1), P.StageTimer())[0]
    for k in ("vertices", "vertices_image", "landmarks68", "landmarks105", "head_pose"):
        np.testing.assert_array_equal(getattr(lazy, k), getattr(eager, k))
    stats = _time_interleaved(variants, runs=3, warmup=1)
    assert set(stats) == set(variants) and all(s["p50_ms"] > 0 for s in stats.values())
