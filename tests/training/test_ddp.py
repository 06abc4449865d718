"""Two gloo processes on half batches give the gradients of one process on the whole batch."""

from __future__ import annotations

import socket

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("timm")

SIZE = 64


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _config(batch: int):
    from smirk_edge.training.config import config_from_dict

    return config_from_dict({
        "stage": 1, "model": {"encoder": "tiny"}, "data": {"image_size": SIZE, "num_workers": 0},
        "finetune": {"freeze_bn": True},  # BatchNorm statistics would differ between half and whole batches
        "run": {"batch_size": batch, "device": "cpu", "log_every": 1, "ckpt_every": 0, "progress": False,
                "tensorboard": False}}, require_sources=False)


def _dataset():
    from smirk_edge.training.data import FixedDataset
    from smirk_edge.training.synthetic import SyntheticDataset

    return FixedDataset(SyntheticDataset(4, size=SIZE, seed=3))


def _batch(ds, idx):
    return {k: torch.stack([ds[i][k] for i in idx]) for k in ds[0]}


def _grads(trainer) -> dict:
    return {n: p.grad.detach().clone() for n, p in trainer.encoder.named_parameters() if p.grad is not None}


def _worker(rank: int, port: int, out: str) -> None:
    import os

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    from smirk_edge.training.trainer import Trainer

    ds = _dataset()
    tr = Trainer(_config(2), out, dataset=ds)
    tr.train_step(_batch(ds, [2 * rank, 2 * rank + 1]))
    torch.save(_grads(tr), f"{out}/grads{rank}.pt")
    tr.close()


def test_two_process_gloo_step_matches_one_process(tmp_path, monkeypatch):
    import torch.multiprocessing as mp

    from smirk_edge.training.trainer import Trainer

    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mp.spawn(_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
        ds = _dataset()
        tr = Trainer(_config(4), tmp_path / "single", dataset=ds)
        tr.train_step(_batch(ds, [0, 1, 2, 3]))
        ref = _grads(tr)
    finally:
        torch.set_num_threads(threads)
    g0 = torch.load(tmp_path / "grads0.pt", weights_only=True)
    g1 = torch.load(tmp_path / "grads1.pt", weights_only=True)
    assert set(g0) == set(ref) and len(ref) > 10
    for n, r in ref.items():
        torch.testing.assert_close(g0[n], g1[n], rtol=0, atol=0, msg=f"ranks disagree on {n}")
        torch.testing.assert_close(g0[n], r, rtol=1e-4, atol=1e-7, msg=f"DDP gradient of {n} differs")
