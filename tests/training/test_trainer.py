"""Trainer: overfitting a fixed batch, a stage-2 step with the cycle, exact resume, official checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    # 2-core CI machines: oversubscribed OpenMP threads make tiny models 30x slower
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cfg(stage=1, size=64, schedule="constant", **run):
    from smirk_edge.training.config import config_from_dict

    r = {"batch_size": 8, "device": "cpu", "log_every": 1, "ckpt_every": 0, "progress": False, "tensorboard": False}
    r.update(run)
    return config_from_dict({"stage": stage, "model": {"encoder": "tiny", "generator": "tiny"},
                             "data": {"image_size": size, "num_workers": 0, "epoch_size": 8},
                             "optim": {"lr": 1e-3, "schedule": schedule}, "run": r}, require_sources=False)


def _fixed(n=8, size=64, seed=1):
    from smirk_edge.training.data import FixedDataset
    from smirk_edge.training.synthetic import SyntheticDataset

    return FixedDataset(SyntheticDataset(n, size=size, seed=seed))


def _batch(ds):
    return {k: torch.stack([ds[i][k] for i in range(len(ds))]) for k in ds[0]}


def test_tiny_model_overfits_a_fixed_batch(tmp_path):
    from smirk_edge.training.trainer import Trainer

    ds = _fixed()
    tr = Trainer(_cfg(), tmp_path, dataset=ds)
    batch = _batch(ds)
    first = None
    for _ in range(30):
        tr.train_step(batch)
        terms = tr.last_terms()
        first = first or terms
    lm0 = first["landmark_contour"] + first["landmark_mediapipe"]
    lm1 = terms["landmark_contour"] + terms["landmark_mediapipe"]
    assert terms["loss"] < first["loss"] / 5, (first, terms)
    assert lm1 < lm0 / 5


def test_stage2_steps_run_generator_and_cycle_both_parities(tmp_path):
    from smirk_edge.training.trainer import Trainer

    ds = _fixed(4, size=96)
    tr = Trainer(_cfg(stage=2, size=96, batch_size=4), tmp_path, dataset=ds)
    before_g = [p.detach().clone() for p in tr.generator.parameters()]
    before_pose = [p.detach().clone() for p in tr.encoder.pose_encoder.parameters()]
    for _ in range(2):  # step 0 freezes the encoder in the cycle, step 1 the generator
        tr.train_step(_batch(ds))
        t = tr.last_terms()
        assert all(torch.isfinite(torch.tensor(v)) for v in t.values()), t
        assert t["cycle"] > 0 and t["reconstruction"] > 0 and t["perceptual"] > 0
    assert any(not torch.equal(a, b) for a, b in zip(before_g, tr.generator.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before_pose, tr.encoder.pose_encoder.parameters()))
    assert tr._last_images["cycle"].shape == (4, 3, 96, 96)


def _losses(path):
    return [json.loads(x) for x in (Path(path) / "log.jsonl").read_text().splitlines()]


def test_resume_continues_the_same_loss_curve(tmp_path):
    from smirk_edge.training.trainer import Trainer

    ds = _fixed()
    over = dict(batch_size=4, max_steps=4, schedule="cosine")
    full = Trainer(_cfg(**over), tmp_path / "full", dataset=ds)
    full.fit()
    a = Trainer(_cfg(batch_size=4, max_steps=3, schedule="cosine"), tmp_path / "split", dataset=ds)
    a.fit()
    b = Trainer(_cfg(**over), tmp_path / "split", dataset=ds, resume="auto")
    assert b.step == 3 and b.epoch == 1 and b.batch_in_epoch == 1
    b.fit()
    ref, got = _losses(tmp_path / "full"), _losses(tmp_path / "split")
    assert [r["step"] for r in got] == [1, 2, 3, 4]
    for r, g in zip(ref, got):
        for k in ("loss", "landmark_contour", "landmark_mediapipe", "lr"):
            assert r[k] == g[k], (k, r, g)


def test_checkpoints_use_the_official_layout(tmp_path):
    from smirk_edge.training.checkpoint import build_encoder, read_checkpoint
    from smirk_edge.training.trainer import Trainer

    ds = _fixed(4)
    tr = Trainer(_cfg(batch_size=4, max_steps=1), tmp_path, dataset=ds)
    tr.fit()
    ck = read_checkpoint(tmp_path / "smirk_latest.pt")
    assert ck.meta["stage"] == 1 and ck.meta["step"] == 1 and ck.meta["encoder_variant"] == "tiny"
    enc = build_encoder(ck)
    x = torch.rand(2, 3, 64, 64)
    tr.encoder.eval()
    with torch.no_grad():
        a, b = enc(x), tr.encoder(x)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    state = torch.load(tmp_path / "smirk_latest.pt", weights_only=True)
    assert all(k.startswith(("smirk_encoder.", "smirk_generator.")) or k == "smirk_edge_meta" for k in state)


def test_stage2_starts_from_a_stage1_checkpoint(tmp_path):
    from smirk_edge.training.checkpoint import read_checkpoint
    from smirk_edge.training.trainer import Trainer

    ds = _fixed(4, size=96)
    s1 = Trainer(_cfg(size=96, batch_size=4, max_steps=1), tmp_path / "s1", dataset=ds)
    s1.fit()
    cfg = _cfg(stage=2, size=96, batch_size=4, max_steps=1)
    cfg.model.init_from = str(tmp_path / "s1" / "smirk_latest.pt")
    s2 = Trainer(cfg, tmp_path / "s2", dataset=ds)
    for a, b in zip(s1.encoder.pose_encoder.parameters(), s2.encoder.pose_encoder.parameters()):
        assert torch.equal(a, b)
    s2.fit()
    ck = read_checkpoint(tmp_path / "s2" / "smirk_latest.pt")
    assert ck.generator and ck.meta["stage"] == 2


def test_finetune_freezes_early_blocks(tmp_path):
    from smirk_edge.training.trainer import Trainer

    cfg = _cfg()
    cfg.finetune.enabled = True
    cfg.finetune.freeze_blocks = 2
    cfg.finetune.train = ["expression"]
    tr = Trainer(cfg, tmp_path, dataset=_fixed(2))
    enc = tr.encoder
    assert not any(p.requires_grad for p in enc.pose_encoder.parameters())
    assert not any(p.requires_grad for p in enc.expression_encoder.encoder.blocks[1].parameters())
    assert all(p.requires_grad for p in enc.expression_encoder.encoder.blocks[-1].parameters())
    assert all(p.requires_grad for p in enc.expression_encoder.expression_layers.parameters())


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.yaml")))
def test_shipped_configs_parse(name):
    pytest.importorskip("yaml")
    from smirk_edge.training.config import load_config

    cfg = load_config(REPO / "configs" / name, require_sources=False)
    assert cfg.stage in (1, 2)


def test_config_rejects_unknown_keys_with_a_hint():
    from smirk_edge.training.config import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="did you mean 'lr'"):
        config_from_dict({"optim": {"lrr": 1}}, require_sources=False)
    cfg = config_from_dict({}, ["optim.lr=5e-4", "run.max_steps=7"], require_sources=False)
    assert cfg.optim.lr == 5e-4 and cfg.run.max_steps == 7


def test_synthetic_supervision_adds_rendered_faces_to_both_stages(tmp_path):
    from smirk_edge.training.config import config_from_dict
    from smirk_edge.training.trainer import Trainer

    for stage, size in ((1, 64), (2, 96)):  # stage 2's perceptual loss needs >= 88 px
        ds = _fixed(4, size=size)
        d = _cfg(stage=stage, size=size, batch_size=4).to_dict()
        d["loss"].update({"synthetic_batch": 4, "weights": {"synthetic": 1.0}})
        tr = Trainer(config_from_dict(d, require_sources=False), tmp_path / f"s{stage}", dataset=ds)
        dev = tr._batch_to(_batch(ds))
        a = tr._synthetic_batch(dev)
        b = tr._synthetic_batch(dev)
        assert a["image"].shape == (4, 3, size, size)
        assert torch.equal(a["image"], b["image"]), "the same step must render the same faces (exact resume)"
        assert a["params"]["expression"].abs().sum() > 0
        exp = [p.detach().clone() for p in tr.encoder.expression_encoder.parameters()]
        tr.train_step(_batch(ds))
        t = tr.last_terms()
        assert t["synthetic"] > 0 and all(torch.isfinite(torch.tensor(v)) for v in t.values()), t
        assert ("landmark_synthetic" in t) == (stage == 1)
        assert not torch.equal(tr._synthetic_batch(dev)["image"], a["image"]), "a new step renders new faces"
        assert any(not torch.equal(x, y) for x, y in zip(exp, tr.encoder.expression_encoder.parameters()))


def test_synthetic_param_loss_names_what_is_missing():
    from smirk_edge.errors import InputError
    from smirk_edge.training.losses import SyntheticWeights, synthetic_param_loss

    z = torch.zeros
    pred = {"expression": z(2, 50), "jaw": z(2, 3), "eyelid": z(2, 2)}  # stage 2: no pose
    gt = {"expression": torch.ones(2, 50), "jaw": z(2, 3), "eyelid": z(2, 2), "pose": z(2, 3)}
    assert float(synthetic_param_loss(pred, gt)) == pytest.approx(1.0)
    with pytest.raises(InputError, match="'jaw' shapes differ"):
        synthetic_param_loss({**pred, "jaw": z(2, 2)}, gt)
    with pytest.raises(InputError, match="no parameter"):
        synthetic_param_loss({}, gt, SyntheticWeights())


def test_cosine_run_schedule_warms_up_then_decays_once(tmp_path):
    from smirk_edge.training.config import ConfigError, config_from_dict
    from smirk_edge.training.trainer import Trainer

    d = _cfg(max_steps=100).to_dict()
    d["optim"].update({"schedule": "cosine_run", "warmup_steps": 10, "min_lr_factor": 0.01})
    tr = Trainer(config_from_dict(d, require_sources=False), tmp_path, dataset=_fixed(4))
    f = tr.scheduler.lr_lambdas[0]
    assert f(0) == pytest.approx(0.1, rel=0.01)  # warm-up
    assert f(9) == pytest.approx(1.0, rel=0.03)  # warm-up done (the cosine has begun)
    assert f(50) == pytest.approx(0.505, rel=0.01)  # half way down, no restart at the epoch end
    assert f(100) == pytest.approx(0.01) and f(500) == pytest.approx(0.01)
    d["run"]["max_steps"] = None
    with pytest.raises(ConfigError, match="cosine_run needs run.max_steps"):
        config_from_dict(d, require_sources=False)


def test_synthetic_eyelid_loss_reaches_a_clamped_eyelid():
    """An eyelid head stuck below 0 gets no gradient through the clamp; the raw value gets one."""
    from smirk_edge.training.encoder import EncoderConfig, SmirkEncoder
    from smirk_edge.training.losses import SyntheticWeights, synthetic_param_loss

    full = SmirkEncoder(EncoderConfig.named("tiny")).train()
    enc = full.expression_encoder
    with torch.no_grad():
        enc.expression_layers[0].bias[50:52] = -5.0  # both eyelids clamped to 0
    out = full(torch.rand(2, 3, 64, 64))  # what the trainer calls
    assert torch.equal(out["eyelid"], torch.zeros(2, 2)) and (out["eyelid_raw"] < 0).all()
    gt = {"eyelid": torch.ones(2, 2), "expression": torch.zeros(2, 50), "jaw": torch.zeros(2, 3)}
    synthetic_param_loss(out, gt, SyntheticWeights(expression=0, jaw=0, pose=0)).backward()
    assert enc.expression_layers[0].bias.grad[50:52].abs().min() > 0
    full.eval()
    assert sorted(full(torch.rand(1, 3, 64, 64))) == sorted(["pose", "cam", "shape", "expression", "eyelid", "jaw"])
    w = SyntheticWeights(expression_slots=16, jaw=0, eyelid=0)
    pred = {"expression": torch.zeros(1, 50)}
    assert float(synthetic_param_loss(pred, {"expression": torch.cat([torch.zeros(1, 16), torch.ones(1, 34)], 1)},
                                      w)) == 0.0, "slots past expression_slots are not supervised"


def test_squared_synthetic_terms_escape_the_l1_median():
    """A slot active (1.5) in 30 % of the renders: an L1 alone settles on the median, 0, for an
    encoder that cannot yet tell; the squared term moves it to the mean (0.45), so the slot and its
    gradient stay alive. This is what kept the first default model's one-sided slots at 0."""
    from smirk_edge.training.losses import SyntheticWeights, synthetic_param_loss

    g = torch.Generator().manual_seed(0)
    gt = torch.zeros(200, 16)
    gt[:60] = 1.5
    gt = gt[torch.randperm(200, generator=g)]
    ends = {}
    for name, w in (("l1", SyntheticWeights(jaw=0, eyelid=0, pose=0)),
                    ("l1+l2", SyntheticWeights(jaw=0, eyelid=0, pose=0, expression_l2=2.0))):
        c = torch.zeros(1, 50, requires_grad=True)  # one prediction for every render
        opt = torch.optim.Adam([c], lr=0.02)
        for _ in range(400):
            opt.zero_grad()
            pred = {"expression": c.expand(200, 50)}
            synthetic_param_loss(pred, {"expression": torch.cat([gt, torch.zeros(200, 34)], 1)}, w).backward()
            opt.step()
        ends[name] = float(c.detach()[0, :16].mean())
    assert abs(ends["l1"]) < 0.05, ends
    assert 0.25 < ends["l1+l2"] < 0.5, ends


def test_lr_pair_term_rewards_the_right_side():
    from smirk_edge.errors import InputError
    from smirk_edge.training.losses import SyntheticWeights, synthetic_param_loss
    from smirk_edge.training.synthetic import STANDIN_LR_PAIRS

    w = SyntheticWeights(expression=0, jaw=0, eyelid=0, pose=0, lr_pairs=1.0)
    gt = {"expression": torch.zeros(1, 50), "eyelid": torch.tensor([[1.0, 0.0]])}  # left wink
    gt["expression"][0, 8] = 1.5                                                     # left smirk

    def loss(e8, e9, lids):
        e = torch.zeros(1, 50)
        e[0, 8], e[0, 9] = e8, e9
        return float(synthetic_param_loss({"expression": e, "eyelid": torch.tensor([lids])}, gt, w,
                                          STANDIN_LR_PAIRS))

    right, symmetric, wrong = loss(1.5, 0, [1.0, 0.0]), loss(0.7, 0.7, [0.5, 0.5]), loss(0, 1.5, [0.0, 1.0])
    assert right == 0.0 < symmetric < wrong
    # same difference, different size: the pair term sees only the side (the L1/L2 terms see the size)
    assert loss(2.0, 0.5, [1.0, 0.0]) == pytest.approx(0.0)
    # pairs past the predicted width are skipped rather than indexing out of range
    assert synthetic_param_loss({"expression": torch.zeros(1, 8), "eyelid": torch.zeros(1, 2)},
                                {"expression": torch.zeros(1, 8), "eyelid": torch.zeros(1, 2)}, w,
                                STANDIN_LR_PAIRS) == 0.0
    with pytest.raises(InputError, match="must be finite and >= 0"):
        SyntheticWeights.from_mapping({"lr_pairs": -1})
    with pytest.raises(InputError, match="did you mean 'lr_pairs'"):
        SyntheticWeights.from_mapping({"lr_pair": 1})


def test_distillation_trains_a_shared_backbone_student_toward_its_teacher(tmp_path):
    """``model.teacher``: a tiny shared-backbone student learns a tiny full teacher's outputs."""
    from smirk_edge.runtimes.torch_encoder import EncoderConfig, SmirkEncoder
    from smirk_edge.training.checkpoint import build_encoder, read_checkpoint, save_checkpoint
    from smirk_edge.training.config import config_from_dict
    from smirk_edge.training.trainer import Trainer

    torch.manual_seed(3)
    teacher = SmirkEncoder(EncoderConfig.tiny())
    teacher.init_weights()
    tpath = save_checkpoint(tmp_path / "teacher.pt", teacher.eval())
    r = {"batch_size": 8, "device": "cpu", "log_every": 1, "ckpt_every": 0, "progress": False, "tensorboard": False}
    cfg = config_from_dict({"stage": 1, "model": {"encoder": "tiny-shared", "teacher": str(tpath)},
                            "data": {"image_size": 64, "num_workers": 0, "epoch_size": 8},
                            "loss": {"weights": {"landmark": 0.0, "shape_prior": 0.0, "expression_reg": 0.0,
                                                 "teacher": 10.0, "teacher_landmarks": 100.0}},
                            "optim": {"lr": 1e-3, "schedule": "constant"}, "run": r}, require_sources=False)
    ds = _fixed()
    tr = Trainer(cfg, tmp_path / "run", dataset=ds)
    assert tr.encoder.config.shared and tr.encoder.shape_encoder.encoder is tr.encoder.pose_encoder.encoder
    batch = _batch(ds)
    first = None
    for _ in range(25):
        tr.train_step(batch)
        terms = tr.last_terms()
        first = first or terms
    assert terms["teacher"] < first["teacher"] / 2 and terms["teacher_landmarks"] < first["teacher_landmarks"]
    path = save_checkpoint(tmp_path / "student.pt", tr.encoder)
    ck = read_checkpoint(path)
    assert ck.meta["encoder_variant"] == "tiny-shared"
    back = build_encoder(ck)
    assert back.config.shared and sum(1 for k in ck.encoder if k.startswith("shape_encoder.encoder.")) == 0


def test_a_shared_student_warm_starts_from_the_teachers_matching_branch(tmp_path):
    """``model.init_from`` a three-backbone checkpoint for a shared student: the backbone and every
    head of matching width are copied, so the student answers that branch exactly as the teacher
    from the first step (the tiny variants share one architecture: all three heads copy)."""
    from smirk_edge.errors import CheckpointError
    from smirk_edge.runtimes.torch_encoder import EncoderConfig, SmirkEncoder, warm_start_shared
    from smirk_edge.training.checkpoint import save_checkpoint
    from smirk_edge.training.config import config_from_dict
    from smirk_edge.training.trainer import Trainer

    torch.manual_seed(5)
    teacher = SmirkEncoder(EncoderConfig.tiny())
    teacher.init_weights()
    with torch.no_grad():  # make the three backbones differ, so the copied one is identifiable
        for p in teacher.pose_encoder.encoder.parameters():
            p.add_(0.05)
    tpath = save_checkpoint(tmp_path / "teacher.pt", teacher.eval())
    r = {"batch_size": 2, "device": "cpu", "progress": False, "tensorboard": False}
    cfg = config_from_dict({"stage": 1, "model": {"encoder": "tiny-shared", "init_from": str(tpath)},
                            "data": {"image_size": 64, "num_workers": 0, "epoch_size": 2}, "run": r},
                           require_sources=False)
    student = Trainer(cfg, tmp_path / "run", dataset=_fixed(2)).encoder.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        t, s = teacher(x), student(x)
    for k in ("expression", "eyelid", "jaw", "shape"):  # expression backbone + expression and shape heads
        torch.testing.assert_close(s[k], t[k], rtol=0, atol=1e-6)
    ref = teacher.expression_encoder.encoder.state_dict()
    for k, v in student.pose_encoder.encoder.state_dict().items():
        assert torch.equal(v, ref[k]), k
    # the pose head reads a different backbone's features in the teacher: copied, but not the same answer
    assert not torch.allclose(s["pose"], t["pose"], atol=1e-4)
    with pytest.raises(CheckpointError, match="shared-backbone variant"):
        warm_start_shared(SmirkEncoder(EncoderConfig.tiny()), teacher.state_dict())


def test_fast_and_faster_warm_start_from_the_full_encoders_branches():
    """The real variants: ``fast`` takes the expression backbone and the expression and shape heads,
    ``faster`` the pose backbone and the pose head (the other heads read other widths)."""
    from smirk_edge.runtimes.torch_encoder import EncoderConfig, SmirkEncoder, warm_start_shared

    full = SmirkEncoder(EncoderConfig.full()).state_dict()
    fast = warm_start_shared(SmirkEncoder(EncoderConfig.fast()), full)
    assert fast == {"backbone": "expression_encoder", "shape_encoder.shape_layers": "shape_encoder.shape_layers",
                    "expression_encoder.expression_layers": "expression_encoder.expression_layers"}
    faster = warm_start_shared(SmirkEncoder(EncoderConfig.faster()), full)
    assert faster == {"backbone": "pose_encoder", "pose_encoder.pose_cam_layers": "pose_encoder.pose_cam_layers"}


def test_a_shared_backbone_cannot_train_one_branch(tmp_path):
    from smirk_edge.runtimes.torch_encoder import EncoderConfig
    from smirk_edge.training.config import ENCODER_VARIANTS, ConfigError, config_from_dict
    from smirk_edge.training.trainer import Trainer

    assert set(ENCODER_VARIANTS) == set(EncoderConfig.variants())
    cfg = config_from_dict({"stage": 2, "model": {"encoder": "tiny-shared", "generator": "tiny"},
                            "data": {"image_size": 96, "num_workers": 0, "epoch_size": 4},
                            "run": {"batch_size": 2, "device": "cpu", "progress": False, "tensorboard": False}},
                           require_sources=False)
    with pytest.raises(ConfigError, match="shares one backbone"):
        Trainer(cfg, tmp_path, dataset=_fixed(4, size=96))
