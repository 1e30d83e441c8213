"""Random-shift augmentation of the in-memory datasets (``data.shift``)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_mlp, make_config, make_data

from prunelab.config import ConfigError, config_hash, parse_config
from prunelab.data.batches import TensorBatches, translate
from prunelab.experiments.han import HanPipeline


def _naive_translate(x: torch.Tensor, offsets: torch.Tensor, fill: float) -> torch.Tensor:
    out = torch.full_like(x, fill)
    h, w = x.shape[-2:]
    for i, (dy, dx) in enumerate(offsets.tolist()):
        for r in range(h):
            for c in range(w):
                if 0 <= r - dy < h and 0 <= c - dx < w:
                    out[i, :, r, c] = x[i, :, r - dy, c - dx]
    return out


def test_translate_matches_the_definition_pixel_by_pixel():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 2, 5, 6, generator=g)
    offsets = torch.randint(-6, 7, (40, 2), generator=g)  # also moves out of the image
    assert torch.equal(translate(x, offsets, fill=-3.0), _naive_translate(x, offsets, -3.0))


def test_zero_offsets_give_the_images_back_as_a_copy():
    x = torch.randn(3, 1, 4, 4)
    out = translate(x, torch.zeros(3, 2, dtype=torch.long))
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def _images(n: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.zeros(n, 1, 9, 9)
    x[:, :, 4, 4] = torch.arange(1, n + 1, dtype=torch.float32)[:, None]  # one lit pixel
    return x, torch.arange(n)


def _epoch(b: TensorBatches, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    b.set_epoch(seed)
    xs, ys = zip(*list(b), strict=True)
    return torch.cat(xs), torch.cat(ys)


def test_shift_keeps_the_order_moves_each_image_within_the_bound_and_is_seeded():
    x, y = _images()
    plain = _epoch(TensorBatches(x, y, batch_size=8), 3)
    shifted = TensorBatches(x, y, batch_size=8, shift=2)
    xs, ys = _epoch(shifted, 3)
    assert torch.equal(ys, plain[1])  # the permutation of shift=0
    assert torch.equal(xs.sum((1, 2, 3)), plain[0].sum((1, 2, 3)))  # nothing falls off
    pos = xs[:, 0].flatten(1).argmax(1)
    dy, dx = pos // 9 - 4, pos % 9 - 4
    assert dy.abs().max() == 2 and dx.abs().max() == 2  # the bound, reached
    assert len(set(zip(dy.tolist(), dx.tolist(), strict=True))) > 10
    again = _epoch(shifted, 3)[0]
    assert torch.equal(xs, again)  # a resumed epoch sees the same images
    x4, y4 = _epoch(shifted, 4)
    assert not torch.equal(xs[torch.argsort(ys)], x4[torch.argsort(y4)])  # new draws each epoch


def test_background_fill_is_the_inputs_minimum():
    x = torch.full((20, 1, 6, 6), -0.5)
    x[:, :, 1:5, 1:5] = 1.0
    xs, _ = _epoch(TensorBatches(x, torch.zeros(20).long(), batch_size=20, shift=3), 0)
    assert set(xs.unique().tolist()) == {-0.5, 1.0}


def test_ranks_together_see_one_process_batches_with_a_shift():
    x, y = _images(48)
    whole = list(_epoch_batches(TensorBatches(x, y, batch_size=8, shift=1), 5))
    ranks = [list(_epoch_batches(TensorBatches(x, y, batch_size=4, shift=1, rank=r, world=2), 5))
             for r in range(2)]
    for b, (xw, yw) in enumerate(whole):
        xr = torch.stack([ranks[r][b][0] for r in range(2)], 1).flatten(0, 1)
        yr = torch.stack([ranks[r][b][1] for r in range(2)], 1).flatten()
        assert torch.equal(yr, yw) and torch.equal(xr, xw)


def _epoch_batches(b: TensorBatches, seed: int):
    b.set_epoch(seed)
    return iter(b)


@pytest.mark.parametrize("kwargs, message", [
    ({"shift": -1}, "shift=-1 is invalid"),
    ({"shift": 9}, "shift=9 is invalid"),
    ({"shift": True}, "shift=True is invalid"),
    ({"shift": 1, "shuffle": False}, "needs shuffled image batches"),
])
def test_bad_shift_is_refused_with_the_allowed_values(kwargs, message):
    x, y = _images(4)
    with pytest.raises(ValueError, match=message):
        TensorBatches(x, y, batch_size=2, **kwargs)


def test_shift_of_flat_inputs_is_refused():
    x, y = _images(4)
    with pytest.raises(ValueError, match="needs shuffled image batches"):
        TensorBatches(x.flatten(1), y, batch_size=2, shift=1)


def test_config_shift_keys():
    base = {"model": {"name": "lenet300"},
            "prune": {"method": "std", "schedule": [{"q": 1.0, "epochs": 1}]}}
    plain = parse_config(base)
    zero = parse_config({**base, "data": {"name": "mnist", "shift": 0}})
    assert config_hash(zero) == config_hash(plain)  # older configs keep their hashes
    assert "shift" not in plain.model_dump()["data"]
    two = parse_config({**base, "data": {"name": "mnist", "shift": 2}})
    assert two.data.shift == 2 and two.model_dump()["data"]["shift"] == 2
    assert config_hash(two) != config_hash(plain)
    with pytest.raises(ConfigError, match="shift"):
        parse_config({**base, "data": {"name": "mnist", "shift": 9}})
    with pytest.raises(ConfigError, match="in-memory datasets"):
        parse_config({**base, "data": {"name": "imagefolder", "root": "x", "shift": 1}})


def _trained(shift: int) -> torch.Tensor:
    cfg = make_config(data={"shift": shift}, train={"epochs": 1, "batch_size": 8},
                      prune={"method": "magnitude", "schedule": [{"sparsity": 0.5, "epochs": 1}]})
    result = HanPipeline(build_mlp(dropout=0.0), cfg, make_data()).run()
    return torch.cat([p.detach().flatten() for p in result.model.parameters()])


def test_a_run_trains_on_shifted_images_reproducibly():
    with_shift = _trained(1)
    assert torch.equal(with_shift, _trained(1))
    assert not torch.allclose(with_shift, _trained(0))
