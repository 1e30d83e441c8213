"""See what pruning did: sensitivity analysis, figures, an HTML report, the trade-off curve.

* :mod:`~prunelab.report.sensitivity` -- prune each layer alone at increasing threshold
  (:func:`sensitivity_sweep`), pick per-layer ``q`` within an accuracy budget
  (:func:`choose_q`) and write it as a config snippet (:func:`config_snippet`);
* :mod:`~prunelab.report.figures` -- weight histograms, connectivity map, conv filter
  masks, per-layer bars, training curves, sensitivity and trade-off curves, and the data
  helpers behind them;
* :mod:`~prunelab.report.html` -- :func:`write_report`, one self-contained ``report.html``;
* :mod:`~prunelab.report.tradeoff` -- Han et al.'s Figure 5 (accuracy vs parameters pruned
  for L1/L2, with and without retraining, and iterative).

Names are imported lazily so that ``prunelab`` commands that do not plot never import
matplotlib.

Example:
    >>> from prunelab.report import choose_q
    >>> choose_q([{"layer": "fc1", "q": 1.0, "val_accuracy": 0.97}], 1.0, baseline=0.975)
    {'fc1': 1.0}
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "SensitivityRow",
    "choose_q",
    "config_snippet",
    "run_tradeoff",
    "sensitivity_sweep",
    "write_report",
]

_WHERE = {
    "SensitivityRow": "sensitivity",
    "choose_q": "sensitivity",
    "config_snippet": "sensitivity",
    "sensitivity_sweep": "sensitivity",
    "write_report": "html",
    "run_tradeoff": "tradeoff",
}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'prunelab.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
