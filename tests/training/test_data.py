"""Training data: crop/landmark convention, mixing sampler, shards, splits, items."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from smirk_edge.training.config import CropAugmentConfig  # noqa: E402
from smirk_edge.training.data import (FaceCropDataset, FaceTable, MixedDataset, MixtureSampler,  # noqa: E402
                                      make_split, ndc_to_crop_px, pack_shards, read_split, table_from_shards,
                                      write_split)

ANNOTATIONS = Path(os.environ.get("SMIRK_EDGE_ANNOTATIONS", "/work/cache/annotations"))


def _dot_table(n=3, seed=0, hw=(180, 200)):
    """Black images with one bright 3x3 dot per chosen landmark; landmarks are a random face-sized cloud."""
    rng = np.random.default_rng(seed)
    H, W = hw
    imgs, l478, l68 = [], [], []
    for _ in range(n):
        c = np.array([W / 2, H / 2]) + rng.uniform(-10, 10, 2)
        pts = c + rng.uniform(-45, 45, (478, 2))
        pts[:5] = c + np.array([(-30, -30), (30, -30), (-30, 30), (30, 30), (0, 0)])  # well apart
        img = np.zeros((H, W, 3), np.uint8)
        for x, y in pts[:5].round().astype(int):
            img[y - 1:y + 2, x - 1:x + 2] = 255
        pts[:5] = pts[:5].round()
        imgs.append(img)
        l478.append(pts.astype(np.float32))
        l68.append(pts[:68].astype(np.float32))
    return FaceTable(np.array([f"img{i}.png" for i in range(n)]), np.stack(l478), np.stack(l68),
                     lambda i: imgs[i], "dots")


def test_landmarks_follow_the_crop_convention():
    table = _dot_table()
    cfg = CropAugmentConfig(rotation=25.0, shift=0.1, brightness=0, contrast=0, saturation=0, channel_gain=0, grey=0)
    ds = FaceCropDataset(table, cfg, size=96, train=True)
    for key in [(0, (1, 2, 3)), (1, (4, 5, 6)), 2]:
        item = ds[key]
        img = item["image"][0].numpy().mean(0)  # (S, S)
        px = ndc_to_crop_px(item["landmarks478"][0, :5].numpy(), 96)
        for x, y in px:
            if not (3 <= x < 92 and 3 <= y < 92):
                continue
            xi, yi = int(round(x)), int(round(y))
            win = img[yi - 3:yi + 4, xi - 3:xi + 4]
            ys, xs = np.mgrid[-3:4, -3:4]
            cx, cy = (win * xs).sum() / win.sum() + xi, (win * ys).sum() / win.sum() + yi
            assert abs(cx - x) < 0.35 and abs(cy - y) < 0.35, (key, x, y, cx, cy)


def test_items_are_deterministic_per_key():
    ds = FaceCropDataset(_dot_table(), CropAugmentConfig(), size=64, views=2)
    a, b, c = ds[(1, (0, 0, 5))], ds[(1, (0, 0, 5))], ds[(1, (0, 0, 6))]
    assert a["image"].shape == (2, 3, 64, 64) and a["landmarks105"].shape == (2, 105, 2)
    assert a["landmarks68"].shape == (2, 68, 2) and a["image"].dtype == torch.float32
    assert torch.equal(a["image"], b["image"]) and not torch.equal(a["image"], c["image"])
    assert not torch.equal(a["image"][0], a["image"][1])  # two independent views


def test_mixture_sampler_weights_ranks_and_resume():
    class Sized:
        def __init__(self, n):
            self.n = n

        def __len__(self):
            return self.n

    mixed = MixedDataset([Sized(100), Sized(10)], weights=[1.0, 3.0])
    s = MixtureSampler(mixed, epoch_size=4000, seed=1)
    s.set_epoch(0)
    idx = np.array([k for k, _ in s])
    frac_small = (idx >= 100).mean()
    assert 0.70 < frac_small < 0.80  # weight 3 of 4
    assert set(idx[idx >= 100]) == set(range(100, 110))  # every face of the small source cycles
    r0 = MixtureSampler(mixed, epoch_size=4000, seed=1, rank=0, world_size=2)
    r1 = MixtureSampler(mixed, epoch_size=4000, seed=1, rank=1, world_size=2)
    keys0, keys1 = list(r0), list(r1)
    assert len(keys0) == len(keys1) == 2000
    assert {k[1][2] for k in keys0}.isdisjoint({k[1][2] for k in keys1})
    r0.set_epoch(0, start=1500)
    assert list(r0) == keys0[1500:]
    r0.set_epoch(1)
    assert [k for k, _ in r0][:50] != [k for k, _ in keys0][:50]


def test_pack_and_read_shards_round_trip(tmp_path):
    table = _dot_table(5)
    s = pack_shards(table, tmp_path / "sh", size=128, margin=2.2, quality=95, shard_mib=0.004, progress=False)
    assert s.faces == 5 and len(s.shards) >= 2
    back = table_from_shards(tmp_path / "sh")
    assert list(back.names) == list(table.names)
    img = back.read(3)
    assert img.shape == (128, 128, 3)
    # the dots are where the stored landmarks say
    for x, y in back.landmarks478[3, :5]:
        if 2 <= x < 125 and 2 <= y < 125:
            assert img[int(round(y)) - 1:int(round(y)) + 2, int(round(x)) - 1:int(round(x)) + 2].max() > 100
    ds = FaceCropDataset(back, CropAugmentConfig(), size=64)
    assert ds[(0, (1, 1, 1))]["image"].shape == (1, 3, 64, 64)


def test_split_keeps_subjects_apart(tmp_path):
    names = [f"n{i}" for i in range(200)]
    groups = [f"s{i // 4}" for i in range(200)]
    sp = make_split(names, groups, val_fraction=0.2, test_fraction=0.1, seed=3)
    part = {n: k for k in ("train", "val", "test") for n in sp[k]}
    for g in set(groups):
        assert len({part[n] for n, gg in zip(names, groups) if gg == g}) == 1
    assert 30 <= len(sp["val"]) <= 50 and len(sp["train"]) + len(sp["val"]) + len(sp["test"]) == 200
    p = write_split(tmp_path / "split.json", sp)
    assert read_split(p, "val") == set(sp["val"])


@pytest.mark.data
@pytest.mark.slow
def test_real_annotations_give_items():
    if not (ANNOTATIONS / "index.json").is_file():
        pytest.skip(f"no annotation folder at {ANNOTATIONS} (set SMIRK_EDGE_ANNOTATIONS)")
    from smirk_edge.training.data import table_from_annotations

    table = table_from_annotations(ANNOTATIONS)
    assert len(table) > 0
    item = FaceCropDataset(table.select(np.arange(2)), size=224)[(0, (0, 0, 0))]
    lm = item["landmarks105"][0]
    assert item["image"].shape == (1, 3, 224, 224)
    assert (lm.abs() < 1).float().mean() > 0.9  # the face is inside the crop


def test_annotated_68_subset_keeps_the_folder_and_the_split_part(tmp_path):
    import json

    from smirk_edge.training.data import DataError, annotated_68_subset

    (tmp_path / "lm").mkdir()
    (tmp_path / "other").mkdir()
    pts = (np.arange(136, dtype=float).reshape(68, 2) + 1.0).tolist()
    for n in ("a", "b"):
        (tmp_path / "lm" / f"{n}.json").write_text(json.dumps({"landmarks68": pts, "scale": 1.0}))
    t = _dot_table(3)
    t.names = np.array(["lm/a.jpg", "lm/b.jpg", "other/c.jpg"])
    split = write_split(tmp_path / "split.json", {"format": "smirk-edge-split", "version": 1, "seed": 0,
                                                   "train": ["lm/a.jpg"], "val": ["lm/b.jpg"], "test": []})
    label, sub = annotated_68_subset(t, f"{tmp_path / 'lm'}:train", tmp_path, str(split))
    assert label == "lm:train" and list(sub.names) == ["lm/a.jpg"] and sub.real68.all()
    assert np.allclose(sub.landmarks68[0], np.asarray(pts) - 1.0)  # 1-based points made 0-based
    label, sub = annotated_68_subset(t, str(tmp_path / "lm"), tmp_path)
    assert label == "lm" and len(sub) == 2
    with pytest.raises(DataError, match="needs a split file"):
        annotated_68_subset(t, f"{tmp_path / 'lm'}:train", tmp_path)
