"""glTF 2.0 files: ``Face.save_mesh("face.glb")`` and ``smirk-edge reconstruct VIDEO --glb``.

Each file is checked twice: its structure and numbers with pygltflib (always), and with the
Khronos glTF validator (npm package ``gltf-validator``), which needs Node.js. The validator is
looked for in ``$SMIRK_EDGE_GLTF_VALIDATOR`` (a folder holding ``node_modules/gltf-validator``),
then in a cache folder where the test installs the pinned version with npm on first use; without
Node.js or npm (or without the registry) those checks skip and say why.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pygltflib = pytest.importorskip("pygltflib", reason="pygltflib not installed (the gltf extra)")

from smirk_edge import gltf  # noqa: E402
from smirk_edge.errors import EngineUnavailable, InputError  # noqa: E402
from smirk_edge.face_model import FaceModel  # noqa: E402
from smirk_edge.results import Face, Params  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "smirk_edge" / "assets" / "examples" / "astronaut.jpg"
VALIDATOR_VERSION = "2.0.0-dev.3.10"
VALIDATE_JS = """
const validator = require('gltf-validator');
const fs = require('fs');
(async () => {
  const out = {};
  for (const f of process.argv.slice(2)) {
    const r = await validator.validateBytes(new Uint8Array(fs.readFileSync(f)));
    out[f] = {errors: r.issues.numErrors, warnings: r.issues.numWarnings,
              messages: r.issues.messages.filter(m => m.severity <= 1).slice(0, 20)};
  }
  console.log(JSON.stringify(out));
})().catch(e => { console.error(e); process.exit(1); });
"""


# ------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def face_model() -> FaceModel:
    return FaceModel.standin()


def _face(fm: FaceModel, seed: int = 0, pose=(0.0, 0.0, 0.0), jaw=(0.0, 0.0, 0.0), expression_scale=0.0,
          eyelid=(0.0, 0.0), track_id: int = 0) -> Face:
    rng = np.random.default_rng(seed)
    p = Params(pose=np.asarray(pose, np.float32), cam=np.array([7.0, 0.0, 0.0], np.float32),
               shape=(rng.normal(size=300) * 0.5).astype(np.float32),
               expression=(rng.normal(size=50) * expression_scale).astype(np.float32),
               eyelid=np.asarray(eyelid, np.float32), jaw=np.asarray(jaw, np.float32))
    verts = fm.decode(shape=p.shape, expression=p.expression, pose=p.pose, jaw=p.jaw, eyelid=p.eyelid).vertices[0]
    k = 1500.0  # pixels per metre
    v_img = np.stack([320 + k * verts[:, 0], 240 - k * verts[:, 1], -k * verts[:, 2]], axis=1).astype(np.float32)
    return Face(params=p, vertices=verts, vertices_image=v_img, landmarks68=np.zeros((68, 2), np.float32),
                landmarks105=np.zeros((105, 2), np.float32), box=np.array([200, 100, 440, 380], np.float32),
                score=0.9, head_pose=np.zeros(3, np.float32), crop_matrix=np.array([[1.0, 0, 0], [0, 1.0, 0]]),
                faces=fm.faces, track_id=track_id)


def _load(path: Path):
    doc = pygltflib.GLTF2().load_binary(str(path))
    return doc, doc.binary_blob()


def _validator_dir() -> Path:
    env = os.environ.get("SMIRK_EDGE_GLTF_VALIDATOR")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "smirk-edge" / f"gltf-validator-{VALIDATOR_VERSION}"


@pytest.fixture(scope="session")
def khronos_validator():
    """A function ``validate(paths) -> {path: report}`` running the Khronos glTF validator."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js not found: the Khronos glTF validator (npm gltf-validator) cannot run")
    folder = _validator_dir()
    if not (folder / "node_modules" / "gltf-validator").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip(f"npm not found and gltf-validator not installed in {folder}")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            r = subprocess.run([npm, "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--silent",
                                f"gltf-validator@{VALIDATOR_VERSION}"], capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            pytest.skip(f"could not install gltf-validator with npm: {exc}")
        if r.returncode != 0 or not (folder / "node_modules" / "gltf-validator").is_dir():
            pytest.skip(f"could not install gltf-validator@{VALIDATOR_VERSION} with npm: {r.stderr.strip()[-400:]}")
    script = folder / "validate_smirk_edge.js"
    script.write_text(VALIDATE_JS)

    def validate(paths) -> dict:
        paths = [str(p) for p in paths]
        r = subprocess.run([node, str(script), *paths], capture_output=True, text=True, timeout=120, cwd=folder)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    return validate


def _assert_valid(validate, *paths):
    reports = validate(paths)
    for p in paths:
        rep = reports[str(p)]
        assert rep["errors"] == 0 and rep["warnings"] == 0, (p, rep)


# ------------------------------------------------------------------------------------- one face


def test_model_space_glb_holds_the_mesh_in_metres(tmp_path, face_model):
    face = _face(face_model, pose=(0.1, 0.4, 0.0), expression_scale=0.5)
    path = face.save_mesh(tmp_path / "face.glb")
    doc, blob = _load(path)
    assert doc.asset.version == "2.0" and doc.scenes[doc.scene].nodes == [0]
    prim = doc.meshes[doc.nodes[0].mesh].primitives[0]
    assert prim.mode == pygltflib.TRIANGLES
    pos = gltf._read_accessor(doc, blob, prim.attributes.POSITION)
    idx = gltf._read_accessor(doc, blob, prim.indices).reshape(-1, 3)
    nrm = gltf._read_accessor(doc, blob, prim.attributes.NORMAL)
    np.testing.assert_allclose(pos, face.vertices, atol=1e-7)
    np.testing.assert_array_equal(idx, face.faces)
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-5)
    acc = doc.accessors[prim.attributes.POSITION]
    np.testing.assert_allclose(acc.min, face.vertices.min(0), atol=1e-7)
    np.testing.assert_allclose(acc.max, face.vertices.max(0), atol=1e-7)
    # normals point toward the viewer (+Z) on a frontal face: the triangles are front-facing
    frontal = _face(face_model)
    fdoc, fblob = _load(frontal.save_mesh(tmp_path / "frontal.glb"))
    fn = gltf._read_accessor(fdoc, fblob, fdoc.meshes[0].primitives[0].attributes.NORMAL)
    assert np.mean(fn[:, 2] > 0) > 0.8
    extras = doc.nodes[0].extras["smirk_edge"]
    assert extras["space"] == "model" and len(extras["params"]["expression"]) == 50


def test_image_space_glb_camera_sees_the_face_where_it_is_in_the_photo(tmp_path, face_model):
    face = _face(face_model, pose=(0.0, -0.3, 0.1))
    w, h, ps = 640, 480, 1e-3
    doc, blob = _load(face.save_mesh(tmp_path / "image.glb", space="image", image_size=(w, h), pixel_size=ps))
    pos = gltf._read_accessor(doc, blob, doc.meshes[0].primitives[0].attributes.POSITION).astype(np.float64)
    cam_node = next(n for n in doc.nodes if n.camera is not None)
    cam = doc.cameras[cam_node.camera]
    assert cam.type == "orthographic"
    o = cam.orthographic
    cx, cy, cz = cam_node.translation
    ndc_x = (pos[:, 0] - cx) / o.xmag
    ndc_y = (pos[:, 1] - cy) / o.ymag
    cols, rows = (ndc_x + 1) / 2 * w, (1 - ndc_y) / 2 * h
    np.testing.assert_allclose(np.stack([cols, rows], 1), face.vertices_image[:, :2], atol=1e-2)
    depth = cz - pos[:, 2]  # the mesh lies between the camera's near and far planes
    assert depth.min() > o.znear and depth.max() < o.zfar
    # nearer in the image frame (smaller depth) is nearer the camera in the file
    order = np.argsort(face.vertices_image[:, 2])
    assert pos[order[0], 2] > pos[order[-1], 2]


def test_save_mesh_checks_its_options(tmp_path, face_model):
    face = _face(face_model)
    with pytest.raises(TypeError, match="glb"):
        face.save_mesh(tmp_path / "face.obj", image_size=(10, 10))
    with pytest.raises(ValueError):
        face.save_mesh(tmp_path / "face.glb", space="world")
    with pytest.raises(InputError):
        gltf.write_face_glb(tmp_path / "face.gltf", face)
    broken = copy.copy(face)
    broken.vertices = face.vertices.copy()
    broken.vertices[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        broken.save_mesh(tmp_path / "nan.glb")
    assert not (tmp_path / "nan.glb").exists()


def test_without_pygltflib_the_error_names_the_extra(tmp_path, face_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "pygltflib", None)
    with pytest.raises(EngineUnavailable, match=r'"gltf" extra') as exc:
        _face(face_model).save_mesh(tmp_path / "face.glb")
    assert isinstance(exc.value, ImportError)


def test_import_smirk_edge_does_not_need_pygltflib():
    code = textwrap.dedent("""
        import sys
        sys.modules['pygltflib'] = None
        import smirk_edge, smirk_edge.results, smirk_edge.gltf, smirk_edge.reconstruct_cli
        from smirk_edge.results import Face
        print('ok')
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


# ------------------------------------------------------------------------------------- animation


def test_jaw_opening_weights_are_exact_at_the_samples_and_never_negative():
    s = np.array(gltf.JAW_OPEN_SAMPLES)
    w = gltf.jaw_open_weights(s)
    np.testing.assert_allclose(w, np.eye(len(s)), atol=1e-6)
    a = np.linspace(-0.1, 1.2, 200)
    w = gltf.jaw_open_weights(a)
    assert (w >= 0).all()
    # the blended opening angle follows the input (piecewise linear, scaled past the last sample)
    np.testing.assert_allclose(w @ s, np.maximum(a, 0), atol=1e-5)


def test_track_animation_reproduces_the_decoder(tmp_path, face_model):
    # exact where the morph model is exact: no expression or eyelids, jaw opening at a sample
    exact = [_face(face_model, seed=3, pose=(0.1, 0.3, -0.05), jaw=(a, 0, 0)) for a in (0.0, 0.2, 0.5)]
    path = gltf.write_track_glb(tmp_path / "exact.glb", face_model, [0.0, 0.04, 0.08], exact)
    for k, f in enumerate(exact):
        t, v = gltf.evaluate_track_glb(path, k)
        assert t == pytest.approx([0.0, 0.04, 0.08][k])
        np.testing.assert_allclose(v, f.vertices, atol=2e-5)
    # typical frames: expressions, jaw between samples and sideways, a turned head (eyelids open), or
    # closing eyelids on a near-frontal head: a millimetre or two on a 15 cm face. (The decoder adds the
    # eyelids after the head rotation, unrotated; the file closes them in the head's frame.)
    rng = np.random.default_rng(1)
    for name, pose_scale, lids in (("turned", 0.2, False), ("eyelids", 0.03, True)):
        frames = [_face(face_model, seed=3, pose=rng.normal(size=3) * pose_scale,
                        jaw=(rng.uniform(0, 0.45), 0.05, -0.03), expression_scale=0.5,
                        eyelid=rng.uniform(0, 1, 2) if lids else (0, 0)) for _ in range(6)]
        path = gltf.write_track_glb(tmp_path / f"{name}.glb", face_model, np.arange(6) / 30.0, frames)
        for k, f in enumerate(frames):
            _, v = gltf.evaluate_track_glb(path, k)
            err = np.linalg.norm(v - f.vertices, axis=1)
            assert err.mean() < 1.5e-3 and err.max() < 5e-3, (name, k, err.mean(), err.max())


def test_track_file_structure(tmp_path, face_model):
    frames = [_face(face_model, seed=2, jaw=(0.1 * i, 0, 0), expression_scale=0.3) for i in range(4)]
    path = gltf.write_track_glb(tmp_path / "t.glb", face_model, [1.0, 1.5, 2.0, 2.5], frames, name="clip_track0")
    doc, blob = _load(path)
    mesh = doc.meshes[0]
    names = mesh.extras["targetNames"]
    assert len(names) == len(mesh.primitives[0].targets) == len(mesh.weights) == 50 + len(gltf.JAW_OPEN_SAMPLES) + 6
    assert names[:2] == ["expression_00", "expression_01"] and "eyelid_left" in names
    anim = doc.animations[0]
    paths = {ch.target.path: ch for ch in anim.channels}
    assert set(paths) == {"rotation", "weights"}
    assert doc.nodes[paths["weights"].target.node].mesh == 0
    times = gltf._read_accessor(doc, blob, anim.samplers[paths["rotation"].sampler].input)
    np.testing.assert_allclose(times, [1.0, 1.5, 2.0, 2.5])
    weights = gltf._read_accessor(doc, blob, anim.samplers[paths["weights"].sampler].output).reshape(4, -1)
    np.testing.assert_allclose(weights[:, :50], np.stack([f.params.expression for f in frames]), atol=1e-6)
    quats = gltf._read_accessor(doc, blob, anim.samplers[paths["rotation"].sampler].output)
    np.testing.assert_allclose(np.linalg.norm(quats, axis=1), 1.0, atol=1e-6)
    with pytest.raises(InputError, match="increasing"):
        gltf.write_track_glb(tmp_path / "bad.glb", face_model, [0.0, 0.0, 1.0, 2.0], frames)
    with pytest.raises(InputError):
        gltf.write_track_glb(tmp_path / "bad.glb", face_model, [0.0], frames)


def test_track_recorder_writes_one_file_per_track(tmp_path, face_model):
    rec = gltf.TrackRecorder(face_model)
    for i in range(3):
        faces = [_face(face_model, seed=0, track_id=0)] + ([_face(face_model, seed=1, track_id=4)] if i else [])
        rec.add(i / 10, faces)
    paths = rec.save(tmp_path, "clip")
    assert [p.name for p in paths] == ["clip.track0.glb", "clip.track4.glb"]
    assert gltf.evaluate_track_glb(paths[1], 0)[0] == pytest.approx(0.1)


# ------------------------------------------------------------------------------------- validator


def test_files_pass_the_khronos_validator(tmp_path, face_model, khronos_validator):
    frames = [_face(face_model, seed=5, pose=(0.05 * i, 0.1, 0), jaw=(0.08 * i, 0.02, 0), expression_scale=0.5,
                    eyelid=(0.1 * i, 0.2)) for i in range(5)]
    still = frames[2]
    a = still.save_mesh(tmp_path / "model.glb")
    b = still.save_mesh(tmp_path / "image.glb", space="image", image_size=(640, 480))
    c = still.save_mesh(tmp_path / "image_nosize.glb", space="image")
    d = gltf.write_track_glb(tmp_path / "track.glb", face_model, np.arange(5) / 25.0, frames)
    e = gltf.write_track_glb(tmp_path / "one_key.glb", face_model, [0.0], frames[:1])
    _assert_valid(khronos_validator, a, b, c, d, e)


def _video(path: Path, n: int = 6, fps: float = 10.0) -> Path:
    import cv2

    img = cv2.imread(str(EXAMPLE))
    img = cv2.resize(img, (img.shape[1] // 2, img.shape[0] // 2))
    h, w = img.shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(n):
        m = cv2.getRotationMatrix2D((w / 2, h / 2), 2.0 * i, 1.0)
        writer.write(cv2.warpAffine(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE))
    writer.release()
    return path


@pytest.mark.onnxruntime
def test_reconstruct_video_glb_writes_an_animated_file_per_track(tmp_path, request):
    pytest.importorskip("onnxruntime")
    from smirk_edge.cli import main

    video = _video(tmp_path / "clip.mp4")
    out = tmp_path / "out"
    assert main(["reconstruct", str(video), str(EXAMPLE), "-o", str(out), "--glb", "--quiet",
                 "--backend", "onnxruntime"]) == 0
    track = out / "clip.track0.glb"
    assert track.is_file() and (out / "astronaut.face0.glb").is_file()
    frames = [json.loads(line) for line in (out / "clip.jsonl").read_text().splitlines() if line.strip()]
    n = sum(1 for fr in frames if any(f["track_id"] == 0 for f in fr["faces"]))
    assert n >= 5
    doc, blob = _load(track)
    times = gltf._read_accessor(doc, blob, doc.animations[0].samplers[0].input)
    np.testing.assert_allclose(times[:3], [0.0, 0.1, 0.2], atol=1e-6)  # the video's times (10 fps)
    # the head rotation in the file is the SDK's head pose (same roll as clip.jsonl), and follows the
    # video's rotation (2 degrees counter-clockwise a frame)
    quats = gltf._read_accessor(doc, blob, doc.animations[0].samplers[0].output)
    rolls = [float(np.degrees(np.arctan2(R[1, 0], R[1, 1]))) for R in (gltf._quat_matrix(q) for q in quats)]
    json_rolls = [f["head_pose_deg"]["roll"] for fr in frames for f in fr["faces"] if f["track_id"] == 0]
    np.testing.assert_allclose(rolls, json_rolls, atol=0.05)
    assert rolls[-1] > rolls[0] + 1.0, rolls
    try:  # the structure checks above run without Node.js; the validator where it can run
        validate = request.getfixturevalue("khronos_validator")
    except pytest.skip.Exception:
        return
    _assert_valid(validate, track, out / "astronaut.face0.glb")


@pytest.mark.parametrize("roll_deg", [0.0, 30.0, 90.0, 180.0, -135.0])
def test_head_rotation_composes_the_crops_roll_like_head_pose(face_model, roll_deg):
    """The glTF head rotation and the reported head pose share one rotation (an upside-down crop,
    180 degrees, included: its rotation part has a zero sine)."""
    from smirk_edge.results import crop_roll_degrees, head_pose_degrees

    face = _face(face_model, pose=(0.1, -0.3, 0.05))
    a = np.radians(roll_deg)
    face.crop_matrix = np.array([[np.cos(a), -np.sin(a), 5.0], [np.sin(a), np.cos(a), -3.0]]) * 1.7
    R = gltf.head_rotation(face)
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-6)
    assert np.isclose(crop_roll_degrees(face.crop_matrix) % 360, roll_deg % 360)
    yaw, pitch, roll = np.radians(head_pose_degrees(face.params.pose, crop_roll_degrees(face.crop_matrix)))
    # R = Ry(yaw) Rx(pitch) Rz(roll), the documented convention of head_pose_degrees
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    Ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    Rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    Rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    np.testing.assert_allclose(R, Ry @ Rx @ Rz, atol=1e-5)
