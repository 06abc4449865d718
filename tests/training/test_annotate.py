"""``smirk-edge annotate`` front end, tested with a fake MediaPipe "interpreter".

CI has no mediapipe: the fake interpreter is an executable Python script that ignores its
arguments (``-u .../mp_worker.py``) and speaks the worker protocol, answering with synthetic
landmarks: the stand-in face model decoded at known poses, placed in the image. One test runs the
real worker when ``$SMIRK_EDGE_MEDIAPIPE_PYTHON`` names an interpreter with mediapipe.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from smirk_edge.face_model import MEDIAPIPE_105_INDICES, FaceModel
from smirk_edge.face_model.model import yaw_bin
from smirk_edge.training import annotate as ann

PX = 900.0  # pixels per metre of the synthetic faces
CENTRE = (120.0, 130.0)

FAKE_WORKER = r'''#!{python}
"""Fake mp_worker: same protocol, synthetic landmarks from $FAKE_MP_TABLE (npz keyed by file stem)."""
import base64, json, os, sys, time
import cv2
import numpy as np

table = dict(np.load(os.environ["FAKE_MP_TABLE"])) if os.environ.get("FAKE_MP_TABLE") else {{}}
log = os.environ.get("FAKE_MP_LOG")
delay = float(os.environ.get("FAKE_MP_DELAY", "0"))
print(json.dumps({{"ready": True, "protocol": 1, "mediapipe": "fake", "numpy": np.__version__,
                  "opencv": cv2.__version__}}), flush=True)
for line in sys.stdin:
    if not line.strip():
        break
    req = json.loads(line)
    stem = os.path.basename(req["path"]).split(".")[0]
    if log:
        with open(log, "a") as f:
            f.write(stem + "\n")
    if stem.startswith("crash"):
        os._exit(7)
    time.sleep(delay)
    out = {{"id": req["id"], "padded": False, "error": "", "width": 0, "height": 0, "faces": 0, "landmarks": ""}}
    img = cv2.imread(req["path"])
    if img is None:
        out["error"] = "cannot decode image"
    else:
        out["height"], out["width"] = img.shape[:2]
        faces = [table[k] for k in sorted(table) if k == stem or k.startswith(stem + "__")]
        if faces:
            lm = np.stack(faces).astype("<f4")
            out["faces"] = len(lm)
            out["landmarks"] = base64.b64encode(lm.tobytes()).decode()
    print(json.dumps(out), flush=True)
'''


def standin_face(yaw_deg=0.0, pitch_deg=0.0, roll_deg=0.0, scale=PX, centre=CENTRE, expression=None):
    """Stand-in decoded at a known pose, as 'MediaPipe' pixels: 478 points (468 mesh + 10 iris
    stand-ins), and the model's own 68 landmarks and pose rotation in the same pixels."""
    fm = FaceModel.standin()
    from smirk_edge.face_model import rodrigues

    r = (rodrigues(np.radians([0.0, 0.0, roll_deg])) @ rodrigues(np.radians([0.0, yaw_deg, 0.0]))
         @ rodrigues(np.radians([pitch_deg, 0.0, 0.0])))
    rotvec, _ = cv2.Rodrigues(r.astype(np.float64))
    geo = fm.decode(pose=rotvec.ravel()[None], expression=expression)

    def to_px(p):
        return np.stack([centre[0] + scale * p[..., 0], centre[1] - scale * p[..., 1], -scale * p[..., 2]], -1)

    mesh = to_px(geo.vertices[0])
    iris = mesh[[33, 133, 159, 145, 468 - 1, 263, 362, 386, 374, 1]]
    return (np.concatenate([mesh, iris]).astype(np.float32), to_px(geo.landmarks68[0]).astype(np.float32),
            fm.decode(pose=rotvec.ravel()[None]).vertices)


@pytest.fixture()
def fake_python(tmp_path, monkeypatch):
    """An executable 'interpreter' that runs the fake worker; its table/log are set via env vars."""
    exe = tmp_path / "fake-mp-python"
    exe.write_text(FAKE_WORKER.format(python=sys.executable))
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.delenv(ann.ENV_PYTHON, raising=False)
    monkeypatch.setenv("FAKE_MP_LOG", str(tmp_path / "requests.log"))
    return str(exe)


def _write_png(path: Path, w=240, h=260):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = np.full((h, w, 3), 128, np.uint8)
    assert cv2.imwrite(str(path), img)


def _requests(tmp_path) -> list[str]:
    p = tmp_path / "requests.log"
    return p.read_text().split() if p.is_file() else []


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    """images/: faces at several yaws (some in a sub-folder), one without a face, one with two
    faces, one corrupt file, plus files that are not images."""
    root = tmp_path / "images"
    table = {}
    for i, yaw in enumerate([0.0, 12.2, -23.7, 31.1, -47.0]):
        sub = "sub/" if i % 2 else ""
        _write_png(root / f"{sub}face{i}.png")
        table[f"face{i}"] = standin_face(yaw)[0]
    _write_png(root / "noface.jpg")
    _write_png(root / "two.PNG")
    table["two__a"] = standin_face(5.0, scale=400.0)[0]  # smaller face first
    table["two__b"] = standin_face(-8.0, scale=800.0)[0]
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden.png").write_bytes(b"")
    np.savez(tmp_path / "table.npz", **table)
    monkeypatch.setenv("FAKE_MP_TABLE", str(tmp_path / "table.npz"))
    return root, table


# ----------------------------------------------------------------------------------------------- derivation


@pytest.mark.parametrize("yaw,pitch,roll", [(0.0, 0.0, 0.0), (17.3, 0.0, 0.0), (-25.2, 8.0, -5.0),
                                            (33.8, -10.0, 12.0), (55.0, 0.0, 0.0), (-60.0, 5.0, 0.0)])
def test_derived_68_equal_the_face_models_own(yaw, pitch, roll):
    lm478, lm68, _ = standin_face(yaw, pitch, roll)
    d = ann.derive_landmarks(lm478[None])
    np.testing.assert_allclose(d["landmarks68"][0], lm68, atol=2e-3)
    np.testing.assert_array_equal(d["landmarks105"][0], lm478[MEDIAPIPE_105_INDICES])
    fm = FaceModel.standin()
    from smirk_edge.face_model import rodrigues

    r = (rodrigues(np.radians([0.0, 0.0, roll])) @ rodrigues(np.radians([0.0, yaw, 0.0]))
         @ rodrigues(np.radians([pitch, 0.0, 0.0])))
    np.testing.assert_allclose(d["rotation"][0], r, atol=1e-4)
    assert d["contour_row"][0] == yaw_bin(r[None])[0]
    assert d["fit_rmse"][0] < 1e-2
    box = d["box"][0]
    assert box[0] == lm478[:, 0].min() and box[3] == lm478[:, 1].max()
    assert fm.n_vertices == 468


def test_derivation_is_invariant_to_image_scale_and_shift():
    lm478, lm68, _ = standin_face(21.0, scale=300.0, centre=(1000.0, 20.0))
    d = ann.derive_landmarks(lm478[None])
    np.testing.assert_allclose(d["landmarks68"][0], lm68, atol=1e-3)
    assert d["contour_row"][0] == 21
    assert abs(d["yaw"][0] - 21.0) < 1e-3


def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(50, 3))
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))
    dst = 2.5 * src @ q.T + np.array([1.0, -2.0, 3.0])
    s, r, t, rmse = ann.fit_similarity(src, dst[None])
    assert abs(s[0] - 2.5) < 1e-9 and rmse[0] < 1e-9
    np.testing.assert_allclose(r[0], q, atol=1e-9)
    np.testing.assert_allclose(t[0], [1.0, -2.0, 3.0], atol=1e-9)


# ----------------------------------------------------------------------------------------------- interpreter


def test_missing_interpreter_is_a_typed_error_with_instructions(tmp_path, monkeypatch):
    monkeypatch.delenv(ann.ENV_PYTHON, raising=False)
    with pytest.raises(ann.MediaPipeUnavailable, match="pip install mediapipe==0.10.21"):
        ann.find_mediapipe_python(tmp_path / "no-such-python")
    monkeypatch.setenv(ann.ENV_PYTHON, str(tmp_path / "nope"))
    with pytest.raises(ann.MediaPipeUnavailable, match=ann.ENV_PYTHON):
        ann.find_mediapipe_python()
    monkeypatch.delenv(ann.ENV_PYTHON)
    monkeypatch.setattr(ann.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ann.MediaPipeUnavailable, match="python -m venv mp"):
        ann.find_mediapipe_python()


def test_env_variable_names_the_interpreter(fake_python, monkeypatch):
    monkeypatch.setenv(ann.ENV_PYTHON, fake_python)
    assert ann.find_mediapipe_python() == fake_python
    assert ann.find_mediapipe_python(sys.executable) == sys.executable  # explicit wins


@pytest.mark.skipif(ann.importlib.util.find_spec("mediapipe") is not None, reason="mediapipe is installed here")
def test_real_worker_without_mediapipe_fails_cleanly(tmp_path):
    w = ann.MediaPipeWorker(sys.executable, log=tmp_path / "w.log")
    with pytest.raises(ann.MediaPipeUnavailable, match="mediapipe"):
        w.start()


# ----------------------------------------------------------------------------------------------- files


def test_discovery_is_sorted_recursive_and_skips_output(folder, tmp_path):
    root, _ = folder
    (root / "out").mkdir()
    _write_png(root / "out" / "ignored.png")
    got_root, rels = ann.discover_images([root], exclude=[root / "out"])
    assert got_root == root.resolve()
    assert rels == ["corrupt.jpg", "face0.png", "face2.png", "face4.png", "noface.jpg", "sub/face1.png",
                    "sub/face3.png", "two.PNG"]
    # several inputs: paths relative to their common folder; a file taken as given
    r2, rels2 = ann.discover_images([root / "sub", root / "noface.jpg"])
    assert r2 == root.resolve() and rels2 == ["noface.jpg", "sub/face1.png", "sub/face3.png"]
    with pytest.raises(ann.AnnotationError, match="does not exist"):
        ann.discover_images([root / "missing"])
    with pytest.raises(ann.AnnotationError, match="not under"):
        ann.discover_images([root / "face0.png"], root=root / "sub")


# ----------------------------------------------------------------------------------------------- runs


def test_annotate_round_trip(folder, fake_python, tmp_path):
    root, table = folder
    out = tmp_path / "ann"
    s = ann.annotate([root], out, python=fake_python, workers=2, shard_size=3, progress=False)
    assert (s.total, s.processed, s.skipped, s.errors, s.found) == (8, 8, 0, 1, 6)
    assert s.found_rate == pytest.approx(6 / 7)
    shards = sorted(out.glob("shard-*.npz"))
    assert [p.name for p in shards] == ["shard-00000.npz", "shard-00001.npz", "shard-00002.npz"]
    for p in shards:  # plain arrays only
        with np.load(p, allow_pickle=False) as z:
            assert set(z.files) == set(ann.ARRAYS)
    idx = ann.read_index(out)
    assert idx["version"] == ann.FORMAT_VERSION and idx["root"] == str(root.resolve())
    assert idx["totals"] == {"images": 8, "found": 6, "errors": 1}
    assert idx["shards"][0]["mediapipe"] == "fake"

    d = ann.load_annotations(out)
    paths = list(d["path"])
    assert paths == sorted(paths) and len(paths) == 8
    i = paths.index("corrupt.jpg")
    assert not d["found"][i] and d["error"][i] and tuple(d["image_size"][i]) == (0, 0)
    assert np.isnan(d["landmarks478"][i]).all() and d["contour_row"][i, 0] == -1
    i = paths.index("noface.jpg")
    assert not d["found"][i] and d["error"][i] == "" and tuple(d["image_size"][i]) == (240, 260)
    i = paths.index("two.PNG")  # the largest face is kept
    np.testing.assert_array_equal(d["landmarks478"][i, 0], table["two__b"])
    for k, yaw in enumerate([0.0, 12.2, -23.7, 31.1, -47.0]):
        i = paths.index(("sub/" if k % 2 else "") + f"face{k}.png")
        lm478, lm68, _ = standin_face(yaw)
        assert d["found"][i] and d["num_faces"][i] == 1
        assert d["landmarks478"].shape[1:] == (1, 478, 3)
        np.testing.assert_array_equal(d["landmarks478"][i, 0], lm478)
        np.testing.assert_array_equal(d["landmarks105"][i, 0], lm478[MEDIAPIPE_105_INDICES])
        np.testing.assert_allclose(d["landmarks68"][i, 0], lm68, atol=2e-3)
        assert abs(d["yaw"][i, 0] - yaw) < 1e-2
        assert d["contour_row"][i, 0] == (round(yaw) if yaw >= 0 else (39 - round(yaw) if yaw >= -39 else 78))
        np.testing.assert_allclose(d["box"][i, 0], [lm478[:, 0].min(), lm478[:, 1].min(),
                                                     lm478[:, 0].max(), lm478[:, 1].max()])
    items = list(ann.iter_annotations(out))
    assert [a.path for a in items] == paths
    a = items[paths.index("face0.png")]
    assert a.found and a.landmarks68.shape == (1, 68, 3) and (a.width, a.height) == (240, 260)
    assert not items[paths.index("noface.jpg")].found


def test_max_faces_keeps_the_largest_first(folder, fake_python, tmp_path):
    root, table = folder
    out = tmp_path / "ann"
    ann.annotate([root / "two.PNG"], out, python=fake_python, max_faces=3, progress=False)
    d = ann.load_annotations(out)
    assert d["num_faces"][0] == 2 and d["landmarks478"].shape == (1, 3, 478, 3)
    np.testing.assert_array_equal(d["landmarks478"][0, 0], table["two__b"])
    np.testing.assert_array_equal(d["landmarks478"][0, 1], table["two__a"])
    assert np.isnan(d["landmarks68"][0, 2]).all()
    with pytest.raises(ann.AnnotationError, match="max_faces"):
        ann.annotate([root / "two.PNG"], out, python=fake_python, max_faces=1, progress=False)


def test_resume_skips_annotated_files(folder, fake_python, tmp_path):
    root, _ = folder
    out = tmp_path / "ann"
    ann.annotate([root / "sub"], out, python=fake_python, shard_size=4, progress=False, root=root)
    assert sorted(_requests(tmp_path)) == ["face1", "face3"]
    s = ann.annotate([root], out, python=fake_python, shard_size=4, progress=False)
    assert (s.skipped, s.processed) == (2, 6)
    assert len(_requests(tmp_path)) == 8  # nothing asked twice
    assert sorted(p.name for p in out.glob("shard-*.npz")) == ["shard-00000.npz", "shard-00001.npz",
                                                               "shard-00002.npz"]
    s = ann.annotate([root], out, python=fake_python, progress=False)
    assert (s.skipped, s.processed) == (8, 0) and len(_requests(tmp_path)) == 8
    d = ann.load_annotations(out)
    assert len(d["path"]) == 8 and len(set(d["path"])) == 8
    assert ann.read_index(out)["totals"]["images"] == 8


def test_worker_crash_is_reported_not_fatal(folder, fake_python, tmp_path):
    root, _ = folder
    _write_png(root / "crash.png")
    out = tmp_path / "ann"
    s = ann.annotate([root], out, python=fake_python, workers=2, progress=False)
    assert s.processed == 9 and s.errors == 2
    d = ann.load_annotations(out)
    i = list(d["path"]).index("crash.png")
    assert "died" in d["error"][i] and not d["found"][i]
    assert d["found"].sum() == 6


def test_interrupted_run_leaves_valid_shards_and_resumes(folder, fake_python, tmp_path):
    root, _ = folder
    out = tmp_path / "ann"
    env = dict(os.environ, FAKE_MP_DELAY="0.3")
    cmd = [sys.executable, "-m", "smirk_edge.training.annotate", str(root), "-o", str(out),
           "--mediapipe-python", fake_python, "--shard-size", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not list(out.glob("shard-00001.npz")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait()
    d = ann.load_annotations(out)
    assert 4 <= len(d["path"]) < 8
    done = set(d["path"])
    s = ann.annotate([root], out, python=fake_python, progress=False)
    assert s.skipped == len(done) and s.processed == 8 - len(done)
    d = ann.load_annotations(out)
    assert sorted(d["path"]) == list(d["path"]) and len(set(d["path"])) == 8


def test_cli_module_contract(folder, fake_python, tmp_path, capsys):
    import argparse

    root, _ = folder
    p = argparse.ArgumentParser()
    ann.add_arguments(p)
    args = p.parse_args([str(root / "sub"), "-o", str(tmp_path / "ann"), "--mediapipe-python", fake_python,
                         "--no-progress", "--workers", "2"])
    assert ann.run(args) == 0
    assert "2 annotated now" in capsys.readouterr().out
    # a typed error, not a traceback, without an interpreter
    assert ann.main([str(root), "-o", str(tmp_path / "x"), "--mediapipe-python", str(tmp_path / "none")]) == 1
    assert "mediapipe==0.10.21" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_reader_rejects_other_folders(tmp_path):
    with pytest.raises(ann.AnnotationError, match="no index.json"):
        ann.load_annotations(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ann.AnnotationError, match="not a smirk-edge-annotations"):
        ann.read_index(tmp_path)


# ----------------------------------------------------------------------------------------------- real MediaPipe


@pytest.mark.slow
@pytest.mark.data
def test_real_mediapipe_on_shared_photos(shared_data, tmp_path):
    python = os.environ.get(ann.ENV_PYTHON)
    if not python:
        pytest.skip(f"set {ann.ENV_PYTHON} to a Python with mediapipe 0.10.21 to run the real worker")
    utk = sorted((shared_data / "faces" / "utkface").glob("*.jpg"))[:: 4000][:4]
    expressive = sorted((shared_data / "faces" / "expressive").glob("*.jpg"))[:: 1000][:3]
    photos = [shared_data / "photos" / n for n in ("2008_001322.jpg", "bald_guys.jpg")]
    inputs = [p for p in utk + expressive + photos if p.is_file()]
    assert len(inputs) >= 5
    out = tmp_path / "ann"
    s = ann.annotate(inputs, out, python=python, workers=2, max_faces=4, progress=False)
    assert s.processed == len(inputs) and s.errors == 0
    d = ann.load_annotations(out)
    assert d["found"].mean() >= 0.8
    f = d["found"]
    lm, box = d["landmarks478"][f, 0], d["box"][f, 0]
    side = (box[:, 2] - box[:, 0] + box[:, 3] - box[:, 1]) / 2
    w = d["image_size"][f, 0]
    assert (box[:, 0] > -0.3 * w).all() and (box[:, 2] < 1.3 * w).all()
    # derived 68 agree with the MediaPipe points they sit on (eye corners, chin) to a few % of the face
    l68 = d["landmarks68"][f, 0]
    for i68, imp in ((36, 33), (45, 263), (8, 152)):
        err = np.linalg.norm(l68[:, i68, :2] - lm[:, imp, :2], axis=1) / side
        assert (err < 0.05).all(), (i68, imp, err)
    assert (d["fit_rmse"][f, 0] / side < 0.1).all()
    assert (np.abs(np.linalg.det(d["rotation"][f, 0]) - 1) < 1e-3).all()
    assert d["num_faces"][list(d["path"]).index("photos/bald_guys.jpg")] >= 2


def test_front_end_imports_light():
    """The CLI imports this module to build its parser: no torch, tqdm or mediapipe at import."""
    code = ("import sys; import smirk_edge.training.annotate; "
            "print(sorted(m for m in ('torch', 'tqdm', 'mediapipe', 'timm') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
