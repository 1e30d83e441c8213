"""Liu et al. 2019, "Rethinking the Value of Network Pruning": fine-tune vs scratch.

Does pruning give good *weights*, or only a good *architecture*? A sweep trains a large
model, prunes it (L1-norm filters, Network Slimming, ThiNet, or unstructured magnitude) and
trains the pruned architecture four ways: fine-tuning the pruned weights, from scratch for
the same epochs (Scratch-E) or the same computation (Scratch-B), and from the rewound
initial weights (lottery ticket).

* :mod:`~prunelab.experiments.rethink.config` -- :class:`RethinkConfig` and its YAML loader;
* :mod:`~prunelab.experiments.rethink.protocol` -- the protocol as functions:
  :func:`get_large_model`,
  :func:`prune`, :func:`run_baseline`, :func:`scratch_b_epochs`, :func:`he_reinit_`,
  :func:`rewind_`;
* :mod:`~prunelab.experiments.rethink.sweep` -- :func:`run_sweep` (resumable, one file per cell) and
  :func:`write_report` (table, JSON, plot);
* :mod:`~prunelab.cli.rethink` -- ``prunelab rethink`` and ``prunelab rethink-report``.

Names are imported lazily, so registering the subcommands imports neither torch nor
matplotlib.

Example:
    >>> from prunelab.experiments.rethink import scratch_b_epochs
    >>> scratch_b_epochs(160, 2.0e8, 1.0e8)
    320
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "RethinkConfig",
    "get_large_model",
    "he_reinit_",
    "load_rethink_config",
    "plan_cells",
    "prune",
    "rewind_",
    "run_baseline",
    "run_sweep",
    "scratch_b_epochs",
    "write_report",
]

_WHERE = {
    "RethinkConfig": "config",
    "load_rethink_config": "config",
    "get_large_model": "protocol",
    "he_reinit_": "protocol",
    "prune": "protocol",
    "rewind_": "protocol",
    "run_baseline": "protocol",
    "scratch_b_epochs": "protocol",
    "plan_cells": "sweep",
    "run_sweep": "sweep",
    "write_report": "sweep",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'prunelab.experiments.rethink' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
