"""The numbers of Han et al. 2015 that prunelab is measured against (REFERENCE.md).

Example:
    >>> PAPER["lenet300"]["compression"]
    12
"""

from __future__ import annotations

from typing import Any

__all__ = ["PAPER"]

# Table 1 and the per-layer Tables 2/3: weights (no biases), FLOP (2 x MAC), input-activation
# density %, weights kept %, FLOP kept %.
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
}
