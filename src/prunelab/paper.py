"""The numbers of Han et al. 2015 that prunelab is measured against (REFERENCE.md), and
Deep Compression's (Han et al. 2016) storage figures for the two LeNets.

Keys are registered model names (:func:`prunelab.models.build_model`), layer keys are module
names of those models, so a run's per-layer table lines up with the paper's by name.

Example:
    >>> PAPER["lenet300"]["compression"]
    12
    >>> PAPER["alexnet_caffe"]["layers"]["classifier.fc6"]["weights_kept"]
    9
    >>> DEEP_COMPRESSION["lenet300"]["compression"]
    40
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEEP_COMPRESSION", "PAPER"]

# Table 1 and the per-layer Tables 2-5: weights (no biases), FLOP (2 x MAC), input-activation
# density %, weights kept %, FLOP kept %. Test errors are top-1 %; the ImageNet entries add
# top-5. A key the reference does not give is left out (the ImageNet activation densities,
# VGG-16's per-layer FLOP kept), so readers must use .get().
PAPER: dict[str, dict[str, Any]] = {
    "lenet300": {
        "network": "LeNet-300-100",
        "test_error_dense": 1.64,
        "test_error_pruned": 1.59,
        "params_total": 267_000,
        "params_nonzero": 22_000,
        "compression": 12,
        "layers": {
            "fc1": {"weights": 235_000, "flops": 470_000, "act_density": 38, "weights_kept": 8,
                    "flops_kept": 8},
            "fc2": {"weights": 30_000, "flops": 60_000, "act_density": 65, "weights_kept": 9,
                    "flops_kept": 4},
            "fc3": {"weights": 1_000, "flops": 2_000, "act_density": 100, "weights_kept": 26,
                    "flops_kept": 17},
        },
        "total": {"weights": 266_000, "flops": 532_000, "act_density": 46, "weights_kept": 8,
                  "flops_kept": 8},
    },
    "lenet5": {
        "network": "LeNet-5",
        "test_error_dense": 0.80,
        "test_error_pruned": 0.77,
        "params_total": 431_000,
        "params_nonzero": 36_000,
        "compression": 12,
        "layers": {
            "conv1": {"weights": 500, "flops": 576_000, "act_density": 82, "weights_kept": 66,
                      "flops_kept": 66},
            "conv2": {"weights": 25_000, "flops": 3_200_000, "act_density": 72,
                      "weights_kept": 12, "flops_kept": 10},
            "fc1": {"weights": 400_000, "flops": 800_000, "act_density": 55, "weights_kept": 8,
                    "flops_kept": 6},
            "fc2": {"weights": 5_000, "flops": 10_000, "act_density": 100, "weights_kept": 19,
                    "flops_kept": 10},
        },
        "total": {"weights": 431_000, "flops": 4_586_000, "act_density": 77, "weights_kept": 8,
                  "flops_kept": 16},
    },
    # AlexNet (Caffe's BVLC model), 227x227 input. Per-layer weights are the exact counts of
    # the architecture (the paper prints them rounded: 35K, 307K, ...); per-layer FLOP are the
    # paper's rounded figures, the total their sum (the paper prints 1.5B; exactly 1.4488e9).
    "alexnet_caffe": {
        "network": "AlexNet",
        "test_error_dense": 42.78,
        "test_error_pruned": 42.77,
        "top5_error_dense": 19.73,
        "top5_error_pruned": 19.67,
        "params_total": 61_000_000,
        "params_nonzero": 6_700_000,
        "compression": 9,
        "layers": {
            "features.conv1": {"weights": 34_848, "flops": 211_000_000, "weights_kept": 84,
                               "flops_kept": 84},
            "features.conv2": {"weights": 307_200, "flops": 448_000_000, "weights_kept": 38,
                               "flops_kept": 33},
            "features.conv3": {"weights": 884_736, "flops": 299_000_000, "weights_kept": 35,
                               "flops_kept": 18},
            "features.conv4": {"weights": 663_552, "flops": 224_000_000, "weights_kept": 37,
                               "flops_kept": 14},
            "features.conv5": {"weights": 442_368, "flops": 150_000_000, "weights_kept": 37,
                               "flops_kept": 14},
            "classifier.fc6": {"weights": 37_748_736, "flops": 75_500_000, "weights_kept": 9,
                               "flops_kept": 3},
            "classifier.fc7": {"weights": 16_777_216, "flops": 33_600_000, "weights_kept": 9,
                               "flops_kept": 3},
            "classifier.fc8": {"weights": 4_096_000, "flops": 8_200_000, "weights_kept": 25,
                               "flops_kept": 10},
        },
        "total": {"weights": 61_000_000, "flops": 1_449_000_000, "weights_kept": 11,
                  "flops_kept": 30},
    },
    # VGG-16 (configuration D), 224x224 input. The reference gives only the totals of weights
    # and FLOP: the per-layer weights and FLOP are the exact counts of the architecture (what
    # the paper's table rounds), the total FLOP is theirs (paper: 30.9B). Per-layer FLOP kept
    # is not in the reference.
    "vgg16": {
        "network": "VGG-16",
        "test_error_dense": 31.50,
        "test_error_pruned": 31.34,
        "top5_error_dense": 11.32,
        "top5_error_pruned": 10.88,
        "params_total": 138_000_000,
        "params_nonzero": 10_300_000,
        "compression": 13,
        "layers": {
            "features.conv1_1": {"weights": 1_728, "flops": 173_408_256, "weights_kept": 58},
            "features.conv1_2": {"weights": 36_864, "flops": 3_699_376_128, "weights_kept": 22},
            "features.conv2_1": {"weights": 73_728, "flops": 1_849_688_064, "weights_kept": 34},
            "features.conv2_2": {"weights": 147_456, "flops": 3_699_376_128, "weights_kept": 36},
            "features.conv3_1": {"weights": 294_912, "flops": 1_849_688_064, "weights_kept": 53},
            "features.conv3_2": {"weights": 589_824, "flops": 3_699_376_128, "weights_kept": 24},
            "features.conv3_3": {"weights": 589_824, "flops": 3_699_376_128, "weights_kept": 42},
            "features.conv4_1": {"weights": 1_179_648, "flops": 1_849_688_064,
                                 "weights_kept": 32},
            "features.conv4_2": {"weights": 2_359_296, "flops": 3_699_376_128,
                                 "weights_kept": 27},
            "features.conv4_3": {"weights": 2_359_296, "flops": 3_699_376_128,
                                 "weights_kept": 34},
            "features.conv5_1": {"weights": 2_359_296, "flops": 924_844_032, "weights_kept": 35},
            "features.conv5_2": {"weights": 2_359_296, "flops": 924_844_032, "weights_kept": 29},
            "features.conv5_3": {"weights": 2_359_296, "flops": 924_844_032, "weights_kept": 36},
            "classifier.fc6": {"weights": 102_760_448, "flops": 205_520_896, "weights_kept": 4},
            "classifier.fc7": {"weights": 16_777_216, "flops": 33_554_432, "weights_kept": 4},
            "classifier.fc8": {"weights": 4_096_000, "flops": 8_192_000, "weights_kept": 23},
        },
        "total": {"weights": 138_000_000, "flops": 30_940_000_000, "weights_kept": 7.5,
                  "flops_kept": 21},
    },
}

# Deep Compression (Han et al. 2016, arXiv 1510.00149): pruning, k-means weight sharing and
# Huffman coding. Storage in KB (1000 bytes; 266,610 fp32 parameters of LeNet-300-100 make
# 1,066 KB, printed as 1070), biases included; errors are top-1 % on the MNIST test set.
DEEP_COMPRESSION: dict[str, dict[str, Any]] = {
    "lenet300": {
        "network": "LeNet-300-100",
        "test_error_dense": 1.64,
        "test_error_compressed": 1.58,
        "dense_kb": 1070,
        "compressed_kb": 27,
        "compression": 40,
    },
    "lenet5": {
        "network": "LeNet-5",
        "test_error_dense": 0.80,
        "test_error_compressed": 0.74,
        "dense_kb": 1720,
        "compressed_kb": 44,
        "compression": 39,
    },
}
