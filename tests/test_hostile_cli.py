"""``smirk-edge reconstruct`` against folders, disks and signals that an attacker (or bad luck) controls.

Runs that could crash the interpreter (OpenCV given a non-UTF-8 path) run in a subprocess, so a
crash is a test failure, not a lost test session. Mounts (a tiny tmpfs for a full disk, a
read-only tmpfs) need root; elsewhere those tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("torch", reason="building the test bundle needs torch")
pytest.importorskip("onnxruntime", reason="needs onnxruntime")

from factories import make_tiny_bundle  # noqa: E402
from smirk_edge.benchmarks import hostile  # noqa: E402
from smirk_edge.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    has_ov = True
    try:
        import openvino  # noqa: F401
    except ImportError:
        has_ov = False
    b, _ = make_tiny_bundle(tmp_path_factory.mktemp("hcli") / "bundle", openvino=has_ov)
    return b.root


def _jpeg(seed: int, size=(240, 320)) -> bytes:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur((rng.random(size + (3,)) * 255).astype(np.uint8), (9, 9), 3)
    return cv2.imencode(".jpg", img)[1].tobytes()


def _cli(args: list, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "smirk_edge", "reconstruct", *[os.fsencode(a) for a in args], b"--quiet"]
    return subprocess.run(cmd, capture_output=True, timeout=timeout, env=env)


def _check_outputs(out: Path) -> dict:
    """Every file in ``out`` is complete: no temporary left, every JSON parses; returns the summary."""
    names = os.listdir(os.fsencode(out))
    assert not [n for n in names if n.startswith(b".smirk-edge-")], names
    for n in names:
        if n.endswith(b".json"):
            json.loads(Path(os.fsdecode(os.path.join(os.fsencode(out), n))).read_bytes())
    return json.loads((out / "summary.json").read_text())


def _accounted(summary: dict) -> int:
    return len(summary["results"]) + len([f for f in summary["failed"]]) + len(summary.get("not_run", []))


# ----------------------------------------------------------------------------- the acceptance folder
def test_folder_of_good_images_a_bomb_a_non_utf8_name_and_summary_jpg(bundle, tmp_path, shared_data):
    inp = tmp_path / "in"
    inp.mkdir()
    photo = sorted((shared_data / "photos").glob("*.jpg"))[0]
    (inp / "a_photo.jpg").write_bytes(photo.read_bytes())
    (inp / "b_noise.jpg").write_bytes(_jpeg(1))
    (inp / "bomb.png").write_bytes(hostile.png_bomb(9000, 9000))
    with open(os.path.join(os.fsencode(inp), b"\xff\xfe caf\xe9.jpg"), "wb") as f:
        f.write(photo.read_bytes())
    (inp / "summary.jpg").write_bytes(_jpeg(2))
    (inp / "zz_broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out"
    r = _cli([inp, "-o", out, "--bundle", bundle, "--backend", "onnxruntime"])
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    summary = _check_outputs(out)
    assert summary["inputs"] == 6 and _accounted(summary) == 6
    failed = {f["input"].rsplit("/", 1)[-1]: f["error"] for f in summary["failed"]}
    assert set(failed) == {"bomb.png", "zz_broken.jpg"}
    assert "refused before decoding" in failed["bomb.png"]
    stems = {r_["input"].rsplit("/", 1)[-1]: r_["stem"] for r_ in summary["results"]}
    assert stems["summary.jpg"] == "summary-2"
    assert json.loads((out / "summary-2.json").read_text())["input"].endswith("summary.jpg")
    odd = os.fsdecode(b"\xff\xfe caf\xe9")
    assert stems["\\xff\\xfe caf\\xe9.jpg"] == odd
    doc = json.loads((out / f"{odd}.json").read_bytes())
    assert doc["faces"] and (out / f"{odd}.overlay.jpg").stat().st_size > 0
    assert (out / f"{odd}.face0.obj").stat().st_size > 0
    r = _cli([inp, "-o", tmp_path / "out2", "--bundle", bundle, "--backend", "onnxruntime", "--strict"])
    assert r.returncode == 1
    assert _accounted(_check_outputs(tmp_path / "out2")) == 6


@pytest.mark.parametrize("raw", [b"\xff.avi", b"clip\xe9\x80.avi"])
def test_video_with_a_non_utf8_name(bundle, tmp_path, raw):
    src = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 10, (160, 120))
    for k in range(4):
        writer.write(cv2.imdecode(np.frombuffer(_jpeg(k, (120, 160)), np.uint8), cv2.IMREAD_COLOR))
    writer.release()
    odd = os.path.join(os.fsencode(tmp_path), raw)
    os.rename(os.fsencode(src), odd)
    out_raw = os.path.join(os.fsencode(tmp_path), b"out\xfe")  # the output folder's name is not UTF-8 either
    r = _cli([os.fsdecode(odd), "-o", os.fsdecode(out_raw), "--bundle", bundle, "--backend", "onnxruntime"])
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    out = Path(os.fsdecode(out_raw))
    summary = _check_outputs(out)
    stem = os.fsdecode(raw[:-4])
    assert json.loads((out / f"{stem}.json").read_bytes())["frames"] == 4  # the video's summary
    lines = (out / f"{stem}.jsonl").read_bytes().splitlines()
    assert [json.loads(ln)["frame"] for ln in lines] == [0, 1, 2, 3]  # one line per frame
    assert summary["results"][0]["stem"] == stem
    from smirk_edge.fileio import opencv_readable_path

    with opencv_readable_path(out / f"{stem}.overlay.mp4") as p:
        cap = cv2.VideoCapture(p)
        assert cap.isOpened() and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 4
        cap.release()


# ----------------------------------------------------------------------------- per-input boundary
def test_an_untyped_error_in_one_input_is_recorded_and_the_batch_goes_on(bundle, tmp_path, monkeypatch, capsys):
    from smirk_edge.pipeline import Stages

    inp = tmp_path / "in"
    inp.mkdir()
    for k in range(3):
        (inp / f"img{k}.jpg").write_bytes(_jpeg(k, (240, 320 + 8 * k)))
    real = Stages.detect

    def flaky(self, image, *args, **kwargs):
        if image.shape[1] == 328:
            raise RuntimeError("detector session failed: bad alloc")
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(Stages, "detect", flaky)
    out = tmp_path / "out"
    code = main(["reconstruct", str(inp), "-o", str(out), "--bundle", str(bundle), "--backend", "onnxruntime",
                 "--quiet"])
    assert code == 0
    err = capsys.readouterr().err
    assert "img1.jpg" in err and "RuntimeError: detector session failed" in err
    summary = _check_outputs(out)
    assert [r["stem"] for r in summary["results"]] == ["img0", "img2"]
    (f,) = summary["failed"]
    assert f["input"].endswith("img1.jpg") and f["type"] == "RuntimeError" and "img1.jpg" in f["error"]
    assert not list(out.glob("img1.*"))  # nothing half-written for the failed input


def test_an_encoder_that_returns_false_is_a_reported_failure(bundle, tmp_path, monkeypatch):
    from smirk_edge import image as im

    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jpg").write_bytes(_jpeg(0))
    monkeypatch.setattr(im.cv2, "imencode", lambda *a, **k: (False, None))
    out = tmp_path / "out"
    code = main(["reconstruct", str(inp), "-o", str(out), "--bundle", str(bundle), "--backend", "onnxruntime",
                 "--quiet"])
    assert code == 1  # nothing could be done
    summary = _check_outputs(out)
    assert "returned False" in summary["failed"][0]["error"] and not list(out.glob("a.*"))


# ----------------------------------------------------------------------------- the output folder
def test_output_equal_to_the_input_folder_is_refused(bundle, tmp_path, capsys):
    inp = tmp_path / "in"
    inp.mkdir()
    (inp / "a.jpg").write_bytes(_jpeg(0))
    before = {p.name: p.read_bytes() for p in inp.iterdir()}
    for out, extra in [(inp, []), (inp / "sub", ["--recursive"])]:
        code = main(["reconstruct", str(inp), "-o", str(out), "--bundle", str(bundle), "--quiet", *extra])
        assert code == 1 and "input folder" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in inp.iterdir()} == before


def test_output_naming_a_file_is_refused(tmp_path, capsys):
    target = tmp_path / "results"
    target.write_text("keep me")
    img = tmp_path / "a.jpg"
    img.write_bytes(_jpeg(0))
    assert main(["reconstruct", str(img), "-o", str(target), "--quiet"]) == 1
    assert "is a file" in capsys.readouterr().err and target.read_text() == "keep me"


def test_outputs_never_overwrite_an_input_in_the_output_folder(bundle, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.jpg").write_bytes(_jpeg(0))
    (out / "a.overlay.jpg").write_bytes(_jpeg(1))  # an input that looks like a result
    keep = (out / "a.overlay.jpg").read_bytes()
    code = main(["reconstruct", str(out / "a.jpg"), str(out / "a.overlay.jpg"), "-o", str(out), "--bundle",
                 str(bundle), "--backend", "onnxruntime", "--quiet"])
    assert code == 0
    assert (out / "a.overlay.jpg").read_bytes() == keep
    assert {r["stem"] for r in _check_outputs(out)["results"]} == {"a-2", "a.overlay"}


@contextlib.contextmanager
def _mount_tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {r.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_read_only_output_fails_before_any_work(bundle, tmp_path, monkeypatch, capsys):
    from smirk_edge.reconstructor import Reconstructor

    img = tmp_path / "a.jpg"
    img.write_bytes(_jpeg(0))

    def never(*a, **k):
        raise AssertionError("the model was loaded before the output folder was checked")

    with _mount_tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        monkeypatch.setattr(Reconstructor, "__init__", never)
        for out in (ro, ro / "new-sub-folder"):
            code = main(["reconstruct", str(img), "-o", str(out), "--bundle", str(bundle), "--quiet"])
            assert code == 1
            assert "not writable" in (e := capsys.readouterr().err) or "cannot create" in e
        assert os.listdir(ro) == []


@pytest.mark.parametrize("free_kib", [0, 12, 40, 120])
def test_full_disk_loses_nothing_and_leaves_nothing_truncated(bundle, tmp_path, free_kib):
    inp = tmp_path / "in"
    inp.mkdir()
    for k in range(5):
        (inp / f"img{k}.jpg").write_bytes(_jpeg(k, (240, 320)))
    with _mount_tmpfs(tmp_path / "disk", "size=256k") as disk:
        out = disk / "out"
        out.mkdir()
        filler = disk / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)  # fill the disk, then give back free_kib
        with contextlib.suppress(OSError):
            while True:
                os.write(fd, b"\0" * 4096)
        os.close(fd)
        with open(filler, "r+b") as f:
            f.truncate(max(0, filler.stat().st_size - free_kib * 1024))
        r = _cli([inp, "-o", out, "--bundle", bundle, "--backend", "onnxruntime", "--mesh-format", "none"])
        err = r.stderr.decode(errors="replace")
        names = os.listdir(out)
        assert not [n for n in names if n.startswith(".smirk-edge-")], names  # no temporaries left
        for n in names:  # whatever was written is complete
            if n.endswith(".json"):
                json.loads((out / n).read_text())
            if n.endswith(".jpg"):
                assert cv2.imread(str(out / n)) is not None
        if (out / "summary.json").exists():
            summary = json.loads((out / "summary.json").read_text())
            assert _accounted(summary) == 5
            for res in summary["results"]:
                assert f"{res['stem']}.json" in names and f"{res['stem']}.overlay.jpg" in names
            for f in summary["failed"]:
                stem = Path(f["input"]).stem
                assert "No space left" in f["error"] and f"{stem}.json" not in names
        elif "summary could not be written" in err:  # the summary went to stdout instead: nothing lost
            assert r.returncode == 1
            summary = json.loads(r.stdout.decode().strip().splitlines()[0])
            assert _accounted(summary) == 5 and any("No space left" in f["error"] for f in summary["failed"])
        else:  # too full for the probe: refused before the work
            assert r.returncode == 1 and "not writable" in err, err


# ----------------------------------------------------------------------------- signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_mid_run_still_writes_a_valid_summary(bundle, tmp_path, sig):
    inp = tmp_path / "in"
    inp.mkdir()
    for k in range(40):
        (inp / f"img{k:02d}.jpg").write_bytes(_jpeg(k, (480, 640)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "smirk_edge", "reconstruct", str(inp), "-o", str(out), "--bundle", str(bundle),
           "--backend", "onnxruntime", "--quiet", "--threads", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list(out.glob("img*.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("the run finished before the signal arrived (machine too fast for 40 inputs)")
    assert proc.returncode == 128 + sig, err.decode(errors="replace")[-2000:]
    summary = _check_outputs(out)
    assert summary["interrupted"] == sig.name and summary["not_run"]
    assert _accounted(summary) == 40
    for res in summary["results"]:
        assert (out / f"{res['stem']}.json").exists() and (out / f"{res['stem']}.overlay.jpg").exists()
    stems = {res["stem"] for res in summary["results"]}
    assert {p.name.split(".")[0] for p in out.glob("img*")} == stems  # no orphan of the interrupted input


@pytest.mark.parametrize("at", ["overlay", "json"])
def test_a_signal_while_an_image_is_written_is_delivered_after_its_record(bundle, tmp_path, monkeypatch, at):
    """The files of one input and its record in the summary stay together: a SIGINT that arrives
    while they are written (here: right after the overlay, or right after the JSON) is held until the
    input is recorded and accounted, then raised; every path written is in the list the CLI cleans up from."""
    from smirk_edge import Reconstructor, fileio
    from smirk_edge import reconstruct_cli as rc

    src = tmp_path / "img.jpg"
    src.write_bytes(_jpeg(3, (240, 320)))
    out = tmp_path / "out"
    out.mkdir()
    real = fileio.atomic_write

    def write_then_signal(path, data):
        made = real(path, data)
        if str(path).endswith(".overlay.jpg" if at == "overlay" else ".json"):
            # what Python runs in the main thread when SIGINT arrives (a real signal in the test
            # process is left to the subprocess tests above: in-process it can hit the engines' threads)
            rc._raise_interrupted(signal.SIGINT, None)
        return made

    monkeypatch.setattr(fileio, "atomic_write", write_then_signal)
    recorded, written = [], []
    with Reconstructor(bundle, backend="onnxruntime", threads=1) as rec:
        rc._image(rec, src, out, "img", "none", written, done=recorded.append)  # the signal is held
        assert len(recorded) == 1, "the input is recorded before the held signal is raised"
        with pytest.raises(rc._Interrupted):
            rc._deliver_held_signal()
        rc._deliver_held_signal()  # delivered once
        with pytest.raises(rc._Interrupted):  # outside a held block the handler raises at once
            rc._raise_interrupted(signal.SIGINT, None)
    assert {p.name for p in out.iterdir()} == {"img.overlay.jpg", "img.json"} == {p.name for p in written}


# ----------------------------------------------------------------------------- OpenVINO writes nothing
def test_openvino_reconstruction_leaves_home_untouched(bundle, tmp_path, shared_data):
    pytest.importorskip("openvino")
    home = tmp_path / "home"
    home.mkdir()
    photo = sorted((shared_data / "photos").glob("*.jpg"))[0]
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), XDG_CACHE_HOME=str(home / ".cache"))
    out = tmp_path / "out"
    r = _cli([photo, "-o", out, "--bundle", bundle, "--backend", "openvino"], env=env)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["engine"].startswith("openvino") and summary["faces"] >= 1
    assert list(home.iterdir()) == []
