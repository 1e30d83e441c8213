"""The one training seam: Trainer over any batches, callbacks, exact masks, resumable epochs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunelab.data import TensorBatches
from prunelab.masks import get_mask, set_mask, sync_optimizer
from prunelab.models import build_model
from prunelab.pruner import prune_model
from prunelab.training import (
    Callback,
    Trainer,
    epoch_seed,
    evaluate,
    evaluate_batches,
    make_optimizer,
)


def _data(n: int = 64, d: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))


def _sgd(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-3)


def test_tensor_batches_cover_every_example_once_per_epoch() -> None:
    x, _ = _data(10)
    b = TensorBatches(x, torch.arange(10), batch_size=4)
    b.set_epoch(3)
    seen = torch.cat([yb for _, yb in b])
    assert sorted(seen.tolist()) == list(range(10)) and len(b) == 3
    b.set_epoch(3)
    assert torch.equal(torch.cat([yb for _, yb in b]), seen)  # a pure function of the seed
    b.set_epoch(4)
    assert not torch.equal(torch.cat([yb for _, yb in b]), seen)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_tensor_batches_reject_bad_batch_size(bad: object) -> None:
    x, y = _data(4)
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatches(x, y, batch_size=bad)  # type: ignore[arg-type]


def test_trainer_matches_a_plain_loop_bit_for_bit() -> None:
    """Same seeds, same batches: the Trainer computes exactly what a plain loop computes."""
    x, y = _data()
    a, b = _mlp(), _mlp()
    opt_a, opt_b = _sgd(a), _sgd(b)
    Trainer(a, opt_a, lr_at=lambda s: 0.05).train_epoch(
        TensorBatches(x, y, batch_size=16), seed=7)
    torch.manual_seed(7)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(7))
    b.train()
    for i in range(0, 64, 16):
        idx = perm[i : i + 16]
        loss = nn.functional.cross_entropy(b(x[idx]), y[idx])
        opt_b.zero_grad(set_to_none=True)
        loss.backward()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_trainer_accepts_a_dataloader_and_counts_examples() -> None:
    x, y = _data(50)
    model = _mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=False)
    stats = Trainer(model, _sgd(model)).train_epoch(loader)
    assert (stats.steps, stats.examples) == (4, 50)
    assert stats.loss > 0 and 0.0 <= stats.accuracy <= 1.0


def test_evaluate_on_a_loader_equals_evaluate_on_tensors() -> None:
    x, y = _data(50)
    model = _mlp()
    loader = DataLoader(TensorDataset(x, y), batch_size=7)
    assert evaluate_batches(model, loader) == pytest.approx(evaluate(model, x, y, batch_size=13))


def test_callbacks_see_every_step_and_epoch() -> None:
    x, y = _data()

    class Log(Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []
            self.epochs: list[int] = []

        def on_step_end(self, trainer: Trainer, step: int) -> None:
            self.steps.append(step)

        def on_epoch_end(self, trainer: Trainer, epoch: int, stats: object) -> None:
            self.epochs.append(epoch)

    log = Log()
    model = _mlp()
    Trainer(model, _sgd(model), callbacks=[log]).fit(
        TensorBatches(x, y, batch_size=16), epochs=3, seed_of_epoch=lambda e: e)
    assert log.steps == list(range(12)) and log.epochs == [0, 1, 2]


def test_fit_resumed_at_an_epoch_equals_an_uninterrupted_fit() -> None:
    x, y = _data()
    batches = TensorBatches(x, y, batch_size=16)
    seeds = lambda e: epoch_seed(0, 1, e)  # noqa: E731
    lr = lambda s: 0.05 * 0.9 ** (s // 4)  # noqa: E731
    full = _mlp()
    opt = _sgd(full)
    Trainer(full, opt, lr_at=lr).fit(batches, epochs=3, seed_of_epoch=seeds)
    part = _mlp()
    opt_p = _sgd(part)
    Trainer(part, opt_p, lr_at=lr).fit(batches, epochs=1, seed_of_epoch=seeds)
    resumed = copy.deepcopy(part)
    opt_r = _sgd(resumed)
    opt_r.load_state_dict(opt_p.state_dict())
    Trainer(resumed, opt_r, lr_at=lr).fit(batches, epochs=3, seed_of_epoch=seeds,
                                          start_epoch=1)
    for pa, pb in zip(full.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_l1_penalty_and_grad_clip_are_applied() -> None:
    x, y = _data()
    batches = TensorBatches(x, y, batch_size=64)
    plain, l1 = _mlp(), _mlp()
    Trainer(plain, torch.optim.SGD(plain.parameters(), lr=0.1)).train_epoch(batches, seed=0)
    Trainer(l1, torch.optim.SGD(l1.parameters(), lr=0.1), l1=0.5,
            l1_params=[l1[0].weight]).train_epoch(batches, seed=0)
    # One SGD step: the L1 model's first-layer weights moved by exactly lr * l1 * sign(w0).
    w0 = _mlp()[0].weight.detach()
    diff = plain[0].weight.detach() - l1[0].weight.detach()
    assert torch.allclose(diff, 0.1 * 0.5 * torch.sign(w0), atol=1e-6)
    clipped = _mlp()
    Trainer(clipped, torch.optim.SGD(clipped.parameters(), lr=1.0),
            grad_clip=1e-3).train_epoch(batches, seed=0)
    moved = sum(float((p - q).detach().pow(2).sum()) for p, q in
                zip(clipped.parameters(), _mlp().parameters(), strict=True)) ** 0.5
    assert moved == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(ValueError, match="grad_clip"):
        Trainer(clipped, torch.optim.SGD(clipped.parameters(), lr=1.0), grad_clip=0.0)


def test_a_callback_may_tighten_masks_between_steps() -> None:
    """Gradual pruning: a mask changes inside an epoch; zeros stay exact from then on."""
    x, y = _data()
    model = _mlp()
    prune_model(model, "magnitude", 0.5, layers="0")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    class Tighten(Callback):
        def on_step_end(self, trainer: Trainer, step: int) -> None:
            if step == 1:
                w = model[0].weight_orig.detach().abs()
                set_mask(model[0], "weight", (w > w[w != 0].median()).float())
                sync_optimizer(opt, model)

    Trainer(model, opt, callbacks=[Tighten()]).train_epoch(
        TensorBatches(x, y, batch_size=16), seed=0)
    mask = get_mask(model[0])
    assert int((mask == 0).sum()) >= 0.7 * mask.numel()
    assert torch.equal(model[0].weight_orig[mask == 0], torch.zeros(int((mask == 0).sum())))
    state = opt.state[model[0].weight_orig]
    assert float(state["exp_avg"][mask == 0].abs().sum()) == 0.0


def test_a_pruned_torchvision_resnet_trains_with_exact_zeros() -> None:
    torch.manual_seed(0)
    model = build_model("torchvision.resnet18", num_classes=4)
    prune_model(model, "magnitude", 0.5)
    before = {n: m.weight_orig.detach().clone() for n, m in model.named_modules()
              if hasattr(m, "weight_orig")}
    x = torch.randn(8, 3, 32, 32)
    y = torch.randint(0, 4, (8,))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    Trainer(model, opt).fit(TensorBatches(x, y, batch_size=4), epochs=1,
                            seed_of_epoch=lambda e: e)
    assert len(before) == 21  # 20 convolutions and the classifier
    for name, m in model.named_modules():
        if name in before:
            mask = get_mask(m)
            assert float(m.weight_orig.detach()[mask == 0].abs().sum()) == 0.0, name
            assert not torch.equal(m.weight_orig[mask != 0], before[name][mask != 0]), name


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_pruned_weights_stay_exactly_zero_under_every_precision(precision: str) -> None:
    from prunelab.pruner import Pruner

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 10))
    Pruner(model).step("magnitude", 0.6)
    before = {i: get_mask(model[i]).clone() for i in (0, 3)}
    w0 = model[3].weight.detach().clone()
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    opt = make_optimizer(model.parameters(), "adam", lr=1e-2, weight_decay=1e-3)
    trainer = Trainer(model, opt, precision=precision)
    assert (trainer.scaler is not None) == (precision == "fp16")
    stats = trainer.train_epoch(batches)
    assert stats.steps == 4 and stats.loss > 0
    for i in (0, 3):
        pruned = before[i] == 0
        assert torch.equal(get_mask(model[i]), before[i])
        assert bool((model[i].weight_orig[pruned] == 0).all())
        assert bool((model[i].weight[pruned] == 0).all())
        assert model[i].weight_orig.dtype == torch.float32
    assert not torch.equal(model[3].weight.detach(), w0)  # it trained


def test_unknown_precision_is_one_clear_error() -> None:
    layer = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="precision 'fp8' is unknown; allowed: fp32, bf16, fp16"):
        Trainer(layer, make_optimizer(layer.parameters(), "sgd", lr=0.1), precision="fp8")
