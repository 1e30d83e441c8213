"""See what pruning did: figures and a self-contained HTML report. This package only renders.

* :mod:`~prunelab.report.figures` -- weight histograms, connectivity map, conv filter
  masks, per-layer bars, training curves, sensitivity and trade-off curves, and the data
  helpers behind them;
* :mod:`~prunelab.report.html` -- :func:`write_report`, one self-contained ``report.html``.

The experiments that produce what is drawn (sensitivity analysis, trade-off curves) live in
:mod:`prunelab.experiments`. Names are imported lazily so that ``prunelab`` commands that
do not plot never import matplotlib.

Example:
    >>> from prunelab.report import write_report
    >>> callable(write_report)
    True
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["write_report"]

_WHERE = {"write_report": "html"}


def __getattr__(name: str) -> Any:
    mod = _WHERE.get(name)
    if mod is None:
        raise AttributeError(f"module 'prunelab.report' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
