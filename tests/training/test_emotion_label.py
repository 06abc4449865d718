"""The emotion-label loss: labels read per subject, a trainer that learns them, a probe scored only on
subjects whose labels did not train the model."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

CSV = """image,emotion,colour,subject
a1.jpg,happiness,0,A
a2.jpg,Anger,0,A
b1.jpg,sadness,1,B
c1.jpg,neutral,0,C
"""


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _csv(tmp_path, text=CSV):
    p = tmp_path / "expressive.csv"
    p.write_text(text)
    return p


def test_labels_come_only_from_the_listed_subjects(tmp_path):
    from smirk_edge.training.data import EMOTION_CLASSES, read_emotion_labels

    got = read_emotion_labels(_csv(tmp_path), ["A", "C"])
    assert got == {"a1.jpg": EMOTION_CLASSES.index("happiness"), "a2.jpg": EMOTION_CLASSES.index("anger"),
                   "c1.jpg": EMOTION_CLASSES.index("neutral")}


def test_label_errors_name_the_problem(tmp_path):
    from smirk_edge.training.data import DataError, read_emotion_labels

    with pytest.raises(DataError, match="no row for subject"):
        read_emotion_labels(_csv(tmp_path), ["A", "Z"])
    with pytest.raises(DataError, match="unknown emotion 'glee'"):
        read_emotion_labels(_csv(tmp_path, CSV + "d1.jpg,glee,0,D\n"), ["D"])
    with pytest.raises(DataError, match="cannot read"):
        read_emotion_labels(tmp_path / "missing.csv", ["A"])


def _cfg(tmp_path, weight=1.0, subjects=("A",)):
    from smirk_edge.training.config import config_from_dict

    return config_from_dict({
        "stage": 1, "model": {"encoder": "tiny"},
        "data": {"image_size": 64, "num_workers": 0, "epoch_size": 8, "emotion_csv": str(_csv(tmp_path)),
                 "emotion_subjects": list(subjects)},
        "loss": {"weights": {"emotion_label": weight}},
        "optim": {"lr": 1e-3, "schedule": "constant"},
        "run": {"batch_size": 8, "device": "cpu", "log_every": 1, "ckpt_every": 0, "progress": False,
                "tensorboard": False}}, require_sources=False)


def test_the_weight_needs_a_csv_and_subjects(tmp_path):
    from smirk_edge.training.config import ConfigError

    with pytest.raises(ConfigError, match="emotion_subjects"):
        _cfg(tmp_path, subjects=())


def test_trainer_learns_the_labels_and_keeps_the_head_out_of_the_checkpoint(tmp_path):
    from smirk_edge.training.checkpoint import read_checkpoint
    from smirk_edge.training.data import FixedDataset
    from smirk_edge.training.synthetic import SyntheticDataset
    from smirk_edge.training.trainer import Trainer

    ds = FixedDataset(SyntheticDataset(8, size=64, seed=3))
    assert all(int(ds[i]["emotion"][0]) == -1 for i in range(8))  # renders carry no label
    tr = Trainer(_cfg(tmp_path, weight=5.0), tmp_path / "run", dataset=ds)
    batch = {k: torch.stack([ds[i][k] for i in range(8)]) for k in ds[0]}
    batch["emotion"] = torch.tensor([[0], [4], [6], [7], [-1], [-1], [4], [0]])
    first = None
    for _ in range(40):
        tr.train_step(batch)
        terms = tr.last_terms()
        first = first or terms
    assert first["emotion_label"] > 1.0  # ~log(8) at the start
    assert terms["emotion_label"] < first["emotion_label"] / 4, (first["emotion_label"], terms["emotion_label"])
    path = tr.save(final=True)
    ck = read_checkpoint(path)
    assert ck.meta["emotion_subjects"] == ["A"]
    assert not any("emotion" in k for k in ck.encoder)

    unlabelled = dict(batch, emotion=torch.full((8, 1), -1))
    tr.train_step(unlabelled)
    assert tr.last_terms()["emotion_label"] == 0.0


def test_probe_is_scored_without_the_unscored_subjects():
    from smirk_edge.training.evaluate import linear_probe

    rng = np.random.default_rng(0)
    n = 60
    groups = np.repeat(["g0", "g1", "g2", "g3", "g4"], n)
    labels = np.tile(np.array(["x", "y"]), len(groups) // 2)
    X = rng.normal(size=(len(groups), 4))
    X[:, 0] += np.where(labels == "x", 3.0, -3.0)  # separable everywhere ...
    noisy = groups == "g2"
    X[noisy, 0] = rng.normal(size=noisy.sum())  # ... except on g2
    everyone = linear_probe(X, labels, groups)
    held = linear_probe(X, labels, groups, unscored=["g2"])
    assert held["unscored"] == ["g2"] and held["n"] == 4 * n
    assert held["per_group"]["g2"]["accuracy"] < 0.8 < held["accuracy"]
    assert held["accuracy"] > everyone["accuracy"]
    assert set(held["per_group"]) == {"g0", "g1", "g2", "g3", "g4"}
    scored = [g for g in held["per_group"] if g != "g2"]
    assert held["accuracy"] == pytest.approx(np.mean([held["per_group"][g]["accuracy"] for g in scored]))


def test_labelled_subjects_are_inherited_by_later_parts():
    from smirk_edge.provenance import inherited_meta

    out = inherited_meta({"name": "part2"}, {"name": "part1", "emotion_subjects": ["dwdii"]})
    assert out["emotion_subjects"] == ["dwdii"]
    out = inherited_meta({"name": "part2", "emotion_subjects": ["302"]}, {"name": "part1", "emotion_subjects": ["dwdii"]})
    assert out["emotion_subjects"] == ["302", "dwdii"]
