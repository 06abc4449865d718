"""The terms of the weights travel with them: checkpoint metadata -> re-exported bundle's model card."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.torch, pytest.mark.onnxruntime]

EXAMPLE = Path(__file__).resolve().parents[2] / "smirk_edge" / "assets" / "examples" / "astronaut.jpg"


def test_the_default_checkpoint_records_its_non_commercial_terms():
    from smirk_edge.training.checkpoint import default_checkpoint_path, read_checkpoint

    ckpt = read_checkpoint("default")  # the name resolves to the shipped file, checkout or wheel
    assert Path(ckpt.path) == default_checkpoint_path()
    assert any("non-commercial" in t for t in ckpt.meta["terms"])
    assert "UTKFace" in ckpt.meta["training_data"] and ckpt.meta["training"]


def test_reexporting_the_default_checkpoint_keeps_its_terms_in_the_card(tmp_path):
    from smirk_edge.bundle import Bundle
    from smirk_edge.export.calibration import jittered_crops
    from smirk_edge.export.pipeline import ExportOptions, export_bundle

    crops = jittered_crops([EXAMPLE], per_image=12)
    report = export_bundle(ExportOptions(checkpoint="default", output=tmp_path / "again.bundle", crops=crops,
                                         formats=["onnx"], precisions=["fp32"], gate_count=8, min_gate_count=8,
                                         golden_count=4, progress=False))
    bundle = Bundle(report.bundle.root)
    card = bundle.main_path(bundle.find(role="model_card")[0]).read_text(encoding="utf-8")
    terms = card[card.index("## Terms of the weights"):]
    assert "non-commercial research only" in terms.split("##")[1]
    assert "Training: not recorded" not in card and "UTKFace" in card
    # so do the subjects whose emotion labels trained the weights: an evaluation of the bundle
    # reads them from the manifest and leaves them out of the probe's score
    from types import SimpleNamespace

    from smirk_edge.training.checkpoint import read_checkpoint
    from smirk_edge.training.evaluate import _bundle_meta

    labelled = sorted(read_checkpoint("default").meta["emotion_subjects"])
    assert labelled and bundle.metadata["emotion_subjects"] == labelled
    assert _bundle_meta(SimpleNamespace(bundle=bundle)) == {"emotion_subjects": labelled}
    # and a bundle made from a checkpoint without terms says so instead of staying silent
    from smirk_edge.provenance import UNRECORDED, card_lines

    assert UNRECORDED in "\n".join(card_lines({}))
