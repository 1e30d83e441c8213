"""Accounting in the paper's conventions: parameters, FLOP, nonzeros, input densities."""

from __future__ import annotations

import json

import pytest
import torch

from prunelab.masks import make_permanent
from prunelab.metrics import count_parameters, model_stats
from prunelab.models import build_model
from prunelab.pruner import Pruner

pytestmark = pytest.mark.usefixtures("single_thread")

MNIST_BATCH = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def test_lenet300_paper_counts():
    stats = model_stats(build_model("lenet300"), MNIST_BATCH)
    assert stats.params_total == 266_610
    assert stats.flops_dense == 532_400
    flops = {layer.name: layer.flops_dense for layer in stats.layers}
    assert flops == {"fc1": 470_400, "fc2": 60_000, "fc3": 2_000}
    weights = {layer.name: layer.weights for layer in stats.layers}
    assert weights == {"fc1": 235_200, "fc2": 30_000, "fc3": 1_000}  # biases left out


def test_lenet5_paper_counts():
    stats = model_stats(build_model("lenet5"), MNIST_BATCH)
    assert stats.params_total == 431_080
    assert stats.flops_dense == 4_586_000
    flops = {layer.name: layer.flops_dense for layer in stats.layers}
    assert flops == {"conv1": 576_000, "conv2": 3_200_000, "fc1": 800_000, "fc2": 10_000}
    assert [layer.kind for layer in stats.layers] == ["conv", "conv", "fc", "fc"]


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_grouped_conv_flops_count_the_inputs_each_output_reads(groups):
    # each of the 8 outputs reads 4/groups input channels x 3x3 at 3x3 positions
    conv = torch.nn.Conv2d(4, 8, 3, groups=groups, bias=False)
    stats = model_stats(conv, torch.rand(1, 4, 5, 5))
    assert stats.layers[0].weights == 8 * (4 // groups) * 9
    assert stats.flops_dense == 2 * 8 * (4 // groups) * 9 * (3 * 3)


def test_dense_model_compression_is_one(mlp, x8):
    stats = model_stats(mlp, x8)
    assert stats.params_nonzero == stats.params_total == 64 * 32 + 32 + 32 * 16 + 16 + 16 * 4 + 4
    assert stats.compression == 1.0


def test_nonzero_counts_and_compression_after_pruning(mlp, x8):
    Pruner(mlp).step("magnitude", {"*": 0.75, "fc3": 0.5})
    stats = model_stats(mlp, x8)
    nonzero = {layer.name: layer.nonzero for layer in stats.layers}
    assert nonzero == {"fc1": 2048 - 1536, "fc2": 512 - 384, "fc3": 64 - 32}
    biases = 32 + 16 + 4  # unmasked and (almost surely) nonzero
    assert stats.params_nonzero == 512 + 128 + 32 + biases
    assert stats.params_total == 2048 + 512 + 64 + biases  # masks do not shrink the total
    assert stats.compression == pytest.approx(stats.params_total / stats.params_nonzero)
    assert stats.layers[0].weights_kept == pytest.approx(0.25)


def test_count_parameters_same_after_make_permanent(mlp):
    Pruner(mlp).step("magnitude", 0.6)
    masked = count_parameters(mlp)
    assert count_parameters(make_permanent(mlp)) == masked


def test_flop_kept_is_kept_fraction_times_input_density(mlp):
    Pruner(mlp).step("magnitude", 0.8)
    x = torch.rand(4, 1, 8, 8) + 0.1
    x[:, :, :2, :] = 0  # 16 of 64 pixels are zero: input density of fc1 is 0.75
    stats = model_stats(mlp, x)
    fc1 = stats.layers[0]
    assert fc1.input_density == 0.75
    kept = (2048 - round(0.8 * 2048)) / 2048
    assert fc1.flops_pruned == pytest.approx(2 * 2048 * kept * 0.75)
    assert fc1.flops_kept == pytest.approx(kept * 0.75)
    # deeper layers: density measured on the actual (ReLU) activations
    with torch.no_grad():
        h1 = mlp.relu1(mlp.fc1(mlp.flatten(x)))
        h2 = mlp.relu2(mlp.fc2(h1))
    for layer, h in zip(stats.layers[1:], (h1, h2), strict=True):
        density = float(torch.count_nonzero(h)) / h.numel()
        assert layer.input_density == pytest.approx(density)
        assert layer.flops_pruned == pytest.approx(layer.flops_dense * layer.weights_kept * density)
    assert stats.flops_pruned == pytest.approx(sum(layer.flops_pruned for layer in stats.layers))


def test_conv_input_density_measured(convnet):
    x = torch.rand(3, 1, 8, 8) + 0.1
    x[:, :, :, :4] = 0
    stats = model_stats(convnet, x)
    assert stats.layers[0].name == "conv1"
    assert stats.layers[0].input_density == 0.5
    assert stats.layers[0].flops_dense == 2 * 4 * 9 * 6 * 6


def test_model_stats_restores_training_mode_and_serialises(mlp, x8):
    mlp.train()
    stats = model_stats(mlp, x8)
    assert mlp.training
    d = json.loads(json.dumps(stats.to_dict()))
    assert d["params_total"] == stats.params_total
    assert d["layers"][0]["shape"] == [32, 64]
