"""``refine="auto"``: a second encoder pass only for faces whose two boxes disagree; threads budget."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from smirk_edge.errors import OptionError
from smirk_edge.options import MAX_THREADS, ReconstructorOptions
from smirk_edge.pipeline import box_disagreement


def test_box_disagreement():
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], float)
    b = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 5]], float)
    assert np.allclose(box_disagreement(a, b), [0.0, 1.0, 0.5])


def test_refine_options():
    assert ReconstructorOptions().refine == "auto"
    assert ReconstructorOptions(refine=True).refine is True
    for bad in (dict(refine="yes"), dict(refine=1), dict(refine_threshold=1.5), dict(refine_threshold=-0.1)):
        with pytest.raises(OptionError):
            ReconstructorOptions(**bad)


def test_threads_upper_bound_says_why():
    with pytest.raises(OptionError, match=f"threads must be in \\[1, {MAX_THREADS}\\].*physical cores"):
        ReconstructorOptions(threads=1000)
    with pytest.raises(OptionError):
        ReconstructorOptions(threads=0)


@pytest.fixture(scope="module")
def photo():
    from smirk_edge.benchmarks.stress_sheet import example_photo

    return cv2.imread(str(example_photo()), cv2.IMREAD_COLOR)


def _run(photo, **kw):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")
    from smirk_edge import Reconstructor

    with Reconstructor(backend="onnxruntime", precision="fp32", threads=1, **kw) as rec:
        passes = []
        real = rec.stages.encode_batch

        def counting(batch, timer):
            passes.append(len(batch))
            return real(batch, timer)

        rec.stages.encode_batch = counting
        res = rec(photo)
        return res, passes, rec


@pytest.mark.onnxruntime
def test_auto_refine_encodes_again_only_past_the_threshold(photo):
    never, p_never, _ = _run(photo, refine=False)
    always, p_always, _ = _run(photo, refine=True)
    lax, p_lax, _ = _run(photo, refine="auto", refine_threshold=1.0)
    strict, p_strict, _ = _run(photo, refine="auto", refine_threshold=0.0)
    assert len(never.faces) == 1 and p_never == [1] and p_always == [1, 1]
    assert p_lax == [1]  # boxes never disagree by more than 1 - IoU = 1
    np.testing.assert_allclose(lax.faces[0].landmarks68, never.faces[0].landmarks68, atol=1e-4)
    assert p_strict == [1, 1]
    np.testing.assert_allclose(strict.faces[0].landmarks68, always.faces[0].landmarks68, atol=1e-4)


@pytest.mark.onnxruntime
def test_default_threads_come_from_the_core_budget(photo):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'smirk-edge[onnxruntime]')")
    from smirk_edge import Reconstructor
    from smirk_edge.cpu import core_budget

    before = cv2.getNumThreads()
    try:
        with Reconstructor(backend="onnxruntime") as rec:
            assert rec.threads == core_budget().threads
            assert cv2.getNumThreads() == rec.threads and rec.thread_budget["opencv"] == rec.threads
    finally:
        cv2.setNumThreads(before)
