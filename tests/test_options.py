"""ReconstructorOptions: every bad option is an OptionError at construction; per-call results;
streams keep their own errors; a fork while another thread is inside a call does not deadlock."""

import os
import sys
import threading
import time

import numpy as np
import pytest

from smirk_edge.errors import InputError, OptionError
from smirk_edge.options import MAX_THREADS, ReconstructorOptions


@pytest.mark.parametrize("bad", [
    dict(threads=1000), dict(threads=100000), dict(threads=0), dict(threads=-1), dict(threads=2.5),
    dict(max_faces=0), dict(max_faces=-3), dict(max_faces=True),
    dict(backend="onnxruntim"), dict(precision="fp8"), dict(detector="medium"),
    dict(crop_scale=9.0), dict(score_threshold=1.5), dict(redetect_every=0), dict(refine="yes"),
    dict(align_roll=float("nan")), dict(smoothing={"beta": 1}), dict(device=""),
])
def test_bad_options_are_option_errors(bad):
    with pytest.raises(OptionError):
        ReconstructorOptions(**bad)


def test_threads_bound_is_stated():
    with pytest.raises(OptionError, match=f"\\[1, {MAX_THREADS}\\]"):
        ReconstructorOptions(threads=100000)
    assert ReconstructorOptions(threads=MAX_THREADS).threads == MAX_THREADS


def test_unknown_keyword_gets_a_hint():
    with pytest.raises(OptionError, match="max_faces"):
        ReconstructorOptions.from_keywords(max_face=2)


def test_reconstructor_rejects_bad_options_before_opening_anything(tmp_path):
    from smirk_edge import Reconstructor

    # the folder is not a bundle: an option error must come first, before the bundle is read
    for bad in (dict(threads=100000), dict(max_faces=0), dict(backend="nope")):
        with pytest.raises(OptionError):
            Reconstructor(tmp_path, **bad)


def test_public_names_are_discoverable():
    import smirk_edge

    for name in ("Reconstructor", "ReconstructorOptions", "FrameResult", "Tracker", "draw", "pipeline"):
        assert name in dir(smirk_edge) and name in smirk_edge.__all__
        assert getattr(smirk_edge, name) is not None
    img = np.zeros((8, 8, 3), np.uint8)
    assert smirk_edge.draw(img, []).shape == img.shape


def test_frame_result_is_a_list():
    from smirk_edge.results import FrameResult

    r = FrameResult([], {"total": 1.0})
    assert r == [] and isinstance(r, list) and r.timings == {"total": 1.0} and r.errors == []


# ---------------------------------------------------------------------------------------------- with a bundle
pytest.importorskip("onnxruntime", reason="needs onnxruntime")


@pytest.fixture(scope="module")
def rec():
    from smirk_edge import Reconstructor

    with Reconstructor(backend="onnxruntime", threads=1, refine=False) as r:
        yield r


@pytest.fixture(scope="module")
def face_image():
    from importlib import resources

    import cv2

    files = sorted(p for p in resources.files("smirk_edge.assets").joinpath("examples").iterdir()
                   if str(p).endswith((".jpg", ".png")))
    return cv2.imread(str(files[0]))


def test_on_error_is_rejected_at_once(rec):
    with pytest.raises(OptionError, match="on_error"):
        rec.stream([], on_error="bogus")  # no iteration needed


@pytest.mark.parametrize("stamps", ["0.0 0.033", ["0.0", "0.033"], [0.0, float("nan")], [0.0, None]])
def test_bad_timestamps_are_rejected_at_once(rec, stamps):
    with pytest.raises(InputError, match="timestamp"):
        rec.stream([np.zeros((32, 32, 3), np.uint8)] * 2, timestamps=stamps)


def test_lazy_bad_timestamps_are_input_errors(rec):
    with pytest.raises(InputError, match="timestamp 1"):
        list(rec.stream([np.zeros((32, 32, 3), np.uint8)] * 2, timestamps=iter([0.0, "x"])))


@pytest.mark.parametrize("landmarks", [np.arange(10.0), np.zeros((5, 2)), [np.arange(4.0)], [np.zeros((1, 2))],
                                       [np.full((3, 2), np.nan)], [["a", "b"], ["c", "d"]]])
def test_from_landmarks_refuses_bad_arrays(rec, landmarks):
    with pytest.raises(InputError, match="landmarks"):
        rec.from_landmarks(np.zeros((64, 64, 3), np.uint8), landmarks)


def test_a_second_stream_keeps_the_first_streams_errors(rec):
    bad = np.zeros((10, 10, 2), np.uint8)
    good = np.zeros((32, 32, 3), np.uint8)
    with pytest.warns(RuntimeWarning):
        first = rec.stream([good, bad, good])
        next(first)
        first_errors = rec.errors
        second = rec.stream([bad, good])
        list(second)
        list(first)
    assert [i for i, _ in first.errors] == [1] and first_errors is first.errors
    assert [i for i, _ in second.errors] == [0]


def test_results_carry_their_own_timings(rec, face_image):
    faces = rec(face_image)
    assert faces and faces.timings["total"] > 0
    assert faces[0].timings == faces.timings and faces[0].timings is not faces.timings


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork test runs on Linux")
def test_fork_while_another_thread_is_inside_a_call(rec, face_image):
    inside, release = threading.Event(), threading.Event()
    parent = os.getpid()
    real = rec.detector

    class Blocking:
        def detect(self, image):
            if os.getpid() == parent:
                inside.set()
                release.wait(30)
            return real.detect(image)

    rec.detector = Blocking()
    try:
        t = threading.Thread(target=rec, args=(face_image,))
        t.start()
        assert inside.wait(30)
        pid = os.fork()
        if pid == 0:  # child: the lock was held by a thread that does not exist here
            try:
                ok = len(rec(face_image)) >= 0
            finally:
                os._exit(0 if ok else 3)
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child deadlocked on the SDK lock")
            time.sleep(0.05)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        release.set()
        t.join(30)
        rec.detector = real
