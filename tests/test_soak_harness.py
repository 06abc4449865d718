"""The soak harness itself works (a short run); the long run's figures are in docs/hardening.md."""

import json

import pytest

pytest.importorskip("torch", reason="building the test bundle needs torch")
pytest.importorskip("onnxruntime", reason="needs onnxruntime")

from factories import make_tiny_bundle  # noqa: E402
from smirk_edge.benchmarks import soak  # noqa: E402


def test_short_soak(tmp_path, shared_data):
    b, _ = make_tiny_bundle(tmp_path / "b")
    out = tmp_path / "soak.json"
    photos = [str(p) for p in sorted((shared_data / "photos").glob("*.jpg"))[:2]]
    code = soak.main(["--bundle", str(b.root), "--images", *photos, "--frames", "60", "--bad-every", "20",
                      "--sample-every", "10", "--warmup", "20", "--backend", "onnxruntime", "-o", str(out)])
    report = json.loads(out.read_text())
    assert report["bad_frames_injected"] == 3 and report["bad_frames_reported"] == 3
    assert report["faces"] > 0 and len(report["samples"]) >= 6
    assert code in (0, 1)  # RSS growth over 60 frames is not meaningful; the long run judges it


def test_soak_on_a_video_file_on_a_720p_canvas(tmp_path, shared_data):
    """--video reads a clip one frame at a time (looping it), --canvas pastes it on a 720p frame,
    and the report carries the peak RSS and the RSS before the Reconstructor was made."""
    clips = sorted((shared_data / "videos").glob("*.mp4"))
    if not clips:
        pytest.skip(f"no video clips in {shared_data / 'videos'}")
    b, _ = make_tiny_bundle(tmp_path / "b")
    out = tmp_path / "soak.json"
    code = soak.main(["--bundle", str(b.root), "--video", str(clips[0]), "--canvas", "1280x720", "--frames", "25",
                      "--bad-every", "0", "--sample-every", "5", "--warmup", "5", "--backend", "onnxruntime",
                      "-o", str(out)])
    report = json.loads(out.read_text())
    assert report["frames"] == 25 and report["bad_frames_injected"] == 0 and report["bad_frames_reported"] == 0
    assert report["source"] == str(clips[0]) and report["canvas"] == "1280x720"
    assert report["peak_rss_mb"] >= report["rss_mb_end"] > report["rss_mb_before_reconstructor"] > 0
    assert code in (0, 1)


def test_soak_rejects_a_bad_canvas(tmp_path, capsys):
    assert soak.main(["--bundle", str(tmp_path), "--canvas", "720p", "-o", str(tmp_path / "s.json")]) == 2
    assert "--canvas takes WxH" in capsys.readouterr().err
