"""``smirk-edge reconstruct`` on real photos, a corrupt file and a short video."""

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="building the test bundle needs torch")
pytest.importorskip("onnxruntime", reason="needs onnxruntime")

from factories import make_tiny_bundle  # noqa: E402
from smirk_edge.cli import main  # noqa: E402
from smirk_edge.meshio import read_mesh  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    b, _ = make_tiny_bundle(tmp_path_factory.mktemp("cli") / "bundle")
    return b.root


def test_photos_with_a_corrupt_file(bundle, shared_data, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    photos = sorted((shared_data / "photos").glob("*.jpg"))[:3]
    for p in photos:
        shutil.copy(p, inp / p.name)
    (inp / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out"
    code = main(["reconstruct", str(inp), "-o", str(out), "--bundle", str(bundle), "--backend", "onnxruntime",
                 "--quiet"])
    assert code == 0
    captured = capsys.readouterr()
    assert "zz_broken.jpg" in captured.err and "not a readable image" in captured.err
    assert "3/4 inputs done" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inputs"] == 4 and len(summary["failed"]) == 1 and summary["faces"] > 0
    # the record names the model that made the results: bundle, variant, checkpoint, artifact
    model = summary["model"]
    assert Path(model["bundle"]) == Path(bundle) and model["artifact"].startswith("encoder")
    assert set(model) == {"bundle", "variant", "checkpoint_sha256", "artifact"}
    for p in photos:
        doc = json.loads((out / f"{p.stem}.json").read_text())
        overlay = cv2.imread(str(out / f"{p.stem}.overlay.jpg"))
        assert overlay.shape[:2] == (doc["height"], doc["width"])
        for i, face in enumerate(doc["faces"]):
            v, f = read_mesh(out / f"{p.stem}.face{i}.obj")
            assert len(f) > 0 and np.isfinite(v).all()
            assert len(face["landmarks68"]) == 68
    # --strict turns the failure into exit code 1
    assert main(["reconstruct", str(inp), "-o", str(out), "--bundle", str(bundle), "--backend", "onnxruntime",
                 "--quiet", "--strict"]) == 1


def test_video(bundle, shared_data, tmp_path):
    photo = cv2.imread(str(sorted((shared_data / "photos").glob("*.jpg"))[0]))
    h, w = photo.shape[:2]
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for dx in range(6):
        writer.write(np.roll(photo, dx * 3, axis=1))
    writer.release()
    out = tmp_path / "out"
    assert main(["reconstruct", str(video), "-o", str(out), "--bundle", str(bundle), "--backend", "onnxruntime",
                 "--quiet"]) == 0
    doc = json.loads((out / "clip.json").read_text())
    assert doc["frames"] == 6 and not doc["truncated"]
    lines = [json.loads(x) for x in (out / "clip.jsonl").read_text().splitlines()]
    assert [x["frame"] for x in lines] == list(range(6))
    cap = cv2.VideoCapture(str(out / "clip.overlay.mp4"))
    assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6


def test_missing_input_is_reported(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    code = main(["reconstruct", str(tmp_path / "nothing.jpg"), "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 1 and "nothing.jpg: no such file" in err
