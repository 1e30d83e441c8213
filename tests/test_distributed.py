"""Data-parallel behaviour with 2 gloo ranks on CPU: identical masks, DDP training, errors.

Each test spawns two processes (``torch.multiprocessing``) that join a gloo process group,
do their part and write what they saw to files that the test then compares.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from prunelab.distributed import (
    MaskMismatchError,
    all_reduce_sums,
    mask_digest,
    sync_masks,
    verify_masks,
)
from prunelab.masks import get_mask, set_mask
from prunelab.pruner import Pruner
from prunelab.training import Trainer, evaluate_batches, make_optimizer

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(fn, out: Path, *args) -> None:
    """Run ``fn(rank, out, *args)`` on 2 gloo ranks; re-raise a rank's failure."""
    port = _free_port()
    mp.spawn(_entry, args=(fn, port, out, args), nprocs=WORLD, join=True)


def _entry(rank: int, fn, port: int, out: Path, args: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        fn(rank, out, *args)
    finally:
        dist.destroy_process_group()


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


# ------------------------------------------------------------------ masks after a step
def _prune_worker(rank: int, out: Path, method: str) -> None:
    model = _model(0)
    with torch.no_grad():  # the ranks' weights drift apart before each step
        for p in model.parameters():
            p.add_(0.05 * rank * torch.randn_like(p))
    pruner = Pruner(model)
    digests = []
    for i, amount in enumerate((0.5, 0.8)):
        # seed differs per rank: without agreement, "random" masks would differ
        pruner.step(method, amount, seed=rank * 100 + i)
        digests.append(mask_digest(model))
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * (rank + 1) * torch.randn_like(p))
    kept = [float(get_mask(model[i]).mean()) for i in (1, 3)]
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"digests": digests, "kept": kept, "dense_std": pruner.dense_std}))


@pytest.mark.parametrize("method", ["magnitude", "random", "std"])
def test_masks_identical_across_ranks_after_every_step(tmp_path: Path, method: str) -> None:
    _spawn(_prune_worker, tmp_path, method)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["digests"] == r1["digests"]
    assert r0["dense_std"] == r1["dense_std"]
    if method != "std":
        assert r0["kept"] == pytest.approx([0.2, 0.2], abs=1 / 320)


def _local_masks_differ_worker(rank: int, out: Path) -> None:
    """Without the agreement (a local, per-rank mask change), verification must fail."""
    model = _model(0)
    mask = torch.ones(32, 64)
    mask[0, rank] = 0
    set_mask(model[1], "weight", mask)
    try:
        verify_masks(model)
        result = "no error"
    except MaskMismatchError as exc:
        result = str(exc)
    sync_masks(model)  # rank 0's masks everywhere again
    verify_masks(model)
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"error": result, "digest": mask_digest(model),
         "pruned_col": int(get_mask(model[1])[0].argmin())}))


def test_verify_raises_on_mismatch_and_sync_repairs(tmp_path: Path) -> None:
    _spawn(_local_masks_differ_worker, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert "masks differ across ranks: rank(s) [1]" in r0["error"]
    assert r0["error"] == r1["error"]
    assert r0["digest"] == r1["digest"] and r1["pruned_col"] == 0


def _error_worker(rank: int, out: Path) -> None:
    model = _model(0)
    pruner = Pruner(model)
    # only rank 0 asks for an impossible step: every rank must raise rank 0's error
    amount = 0.9999 if rank == 0 else 0.5
    try:
        pruner.step("magnitude", amount)
        result = "no error"
    except ValueError as exc:
        result = str(exc)
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"error": result, "masked": [get_mask(model[i]) is not None for i in (1, 3)],
         "digest": mask_digest(model)}))


def test_rank0_error_raised_on_every_rank_and_nothing_changes(tmp_path: Path) -> None:
    _spawn(_error_worker, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert "would remove all its weights" in r0["error"]
    assert r1["error"] == r0["error"]
    assert r0["masked"] == r1["masked"] == [False, False]
    assert r0["digest"] == r1["digest"]


# ------------------------------------------------------------------ DDP training
def _data(n: int = 96) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def _train(model: nn.Module, batches, precision: str = "fp32", epochs: int = 2):
    opt = make_optimizer(model.parameters(), "sgd", lr=0.1, momentum=0.9, weight_decay=5e-4)
    trainer = Trainer(model, opt, precision=precision, grad_clip=5.0)
    for _ in range(epochs):
        stats = trainer.train_epoch(batches)
    return trainer, stats


def _ddp_worker(rank: int, out: Path, precision: str) -> None:
    x, y = _data()
    model = _model(0)
    Pruner(model).step("magnitude", 0.7)
    # the global batches of 16, each split between the ranks as DistributedSampler does
    batches = [(x[i:i + 16][rank::WORLD], y[i:i + 16][rank::WORLD]) for i in range(0, 96, 16)]
    trainer, stats = _train(model, batches, precision)
    assert trainer.distributed
    grads_masked = bool((model[1].weight_orig.grad[get_mask(model[1]) == 0] == 0).all())
    _, acc = evaluate_batches(model, [(x[rank::WORLD], y[rank::WORLD])], reduce=True)
    (out / f"rank{rank}.json").write_text(json.dumps({
        "w1": model[1].weight.detach().flatten().tolist(),
        "w3": model[3].weight.detach().flatten().tolist(),
        "pruned_zero": [bool((model[i].weight_orig[get_mask(model[i]) == 0] == 0).all())
                        for i in (1, 3)],
        "grads_masked": grads_masked,
        "loss": stats.loss, "examples": stats.examples, "val_acc": acc,
        "sum": all_reduce_sums([1.0])[0],
    }))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_two_ranks_equal_one_process_with_the_same_global_batch(
    tmp_path: Path, precision: str
) -> None:
    _spawn(_ddp_worker, tmp_path, precision)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["w1"] == r1["w1"] and r0["w3"] == r1["w3"]  # DDP keeps ranks identical
    assert r0["pruned_zero"] == r1["pruned_zero"] == [True, True]
    assert r0["grads_masked"] and r1["grads_masked"]
    assert r0["examples"] == 96 and r0["loss"] == pytest.approx(r1["loss"])
    assert r0["val_acc"] == r1["val_acc"] and r0["sum"] == 2.0

    x, y = _data()
    model = _model(0)
    Pruner(model).step("magnitude", 0.7)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]
    _, stats = _train(model, batches, precision)
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert torch.tensor(r0["w1"]) == pytest.approx(model[1].weight.detach().flatten(), abs=tol)
    assert torch.tensor(r0["w3"]) == pytest.approx(model[3].weight.detach().flatten(), abs=tol)
    assert r0["loss"] == pytest.approx(stats.loss, rel=1e-4 if precision == "fp32" else 2e-2)
    _, acc = evaluate_batches(model, [(x, y)])
    if precision == "fp32":
        assert r0["val_acc"] == acc


# ------------------------------------------------------------------ channel criteria
def _thinet_worker(rank: int, out: Path) -> None:
    from prunelab.channel_masks import apply_channel_masks
    from prunelab.criteria.channels import _channel_keep_local, channel_keep
    from prunelab.graph import trace_structure

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3))
    torch.manual_seed(10 + rank)  # every rank sees different data; alone, rank 1's data
    x = torch.randn(4, 3, 10, 10)  # would make ThiNet keep other channels (checked below)
    if rank:
        x[:, 0] *= 8
    alone = _channel_keep_local(model, "thinet", 0.5, example_input=x, layers=["0"])
    keep = channel_keep(model, "thinet", 0.5, example_input=x, layers=["0"])
    apply_channel_masks(model, keep, trace_structure(model, x))
    (out / f"rank{rank}.json").write_text(json.dumps(
        {"keep": {k: v.tolist() for k, v in keep.items()}, "digest": mask_digest(model),
         "alone": alone["0"].tolist()}))


def test_data_dependent_channel_criterion_gives_identical_masks(tmp_path: Path) -> None:
    _spawn(_thinet_worker, tmp_path)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD))
    assert r0["alone"] != r1["alone"]  # the ranks' own decisions would differ
    assert r0["keep"] == r1["keep"] == {"0": r0["alone"]}  # rank 0's decision everywhere
    assert r0["digest"] == r1["digest"]
