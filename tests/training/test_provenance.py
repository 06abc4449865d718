"""Training keeps the terms of the weights it starts from, and adds those of its own data."""

from __future__ import annotations

import pytest

from smirk_edge.provenance import card_lines, inherited_meta, merge_terms

SOURCE = {"name": "default_stage1f", "stage": 1, "step": 1871, "terms": ["non-commercial research only"],
          "training_data": "UTKFace"}


def test_inherited_meta_never_drops_a_term_of_the_source():
    meta = inherited_meta({"name": "site", "step": 40, "terms": ["our photos: internal use"],
                           "training_data": "site photos"}, SOURCE)
    assert meta["terms"] == ["non-commercial research only", "our photos: internal use"]
    assert meta["training_data"] == "UTKFace; then site photos"
    assert meta["derived_from"] == [{"name": "default_stage1f", "stage": 1, "step": 1871}]
    assert merge_terms("a", ["a", "b"], None, "") == ["a", "b"]
    assert "terms" not in inherited_meta({"name": "x"}, None)  # nothing recorded: nothing invented
    text = "\n".join(card_lines(meta))
    assert "**non-commercial research only**" in text and "default_stage1f" in text


def test_finetuned_checkpoint_carries_the_source_terms(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("timm")
    from smirk_edge.training.checkpoint import read_checkpoint, save_checkpoint
    from smirk_edge.training.config import config_from_dict
    from smirk_edge.training.data import FixedDataset
    from smirk_edge.training.encoder import EncoderConfig, SmirkEncoder
    from smirk_edge.training.synthetic import SyntheticDataset
    from smirk_edge.training.trainer import Trainer

    torch.set_num_threads(1)
    enc = SmirkEncoder(EncoderConfig.tiny())
    enc.init_weights()
    src = save_checkpoint(tmp_path / "src.pt", enc, meta=SOURCE)
    cfg = config_from_dict({"model": {"encoder": "tiny", "generator": "tiny", "init_from": str(src)},
                            "data": {"image_size": 64, "num_workers": 0, "epoch_size": 4},
                            "terms": ["site photos: ours"], "training_data": "four synthetic renders",
                            "run": {"batch_size": 4, "device": "cpu", "max_steps": 1, "ckpt_every": 0,
                                    "progress": False, "tensorboard": False}}, require_sources=False)
    tr = Trainer(cfg, tmp_path / "run", dataset=FixedDataset(SyntheticDataset(4, size=64, seed=1)))
    tr.fit()
    meta = read_checkpoint(tmp_path / "run" / "smirk_latest.pt").meta
    assert meta["terms"] == ["non-commercial research only", "site photos: ours"]
    assert meta["derived_from"][-1]["name"] == "default_stage1f"
    assert "config run" in meta["training"] and meta["training_data"].startswith("UTKFace")
