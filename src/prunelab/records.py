"""Typed records of a run: epochs and events (prune, dropout rule, best epoch), and the
points of a sensitivity sweep (:class:`SensitivityRow`, read and written as CSV).

A run's ``log.jsonl`` and its checkpoint hold these records as JSON objects with a ``kind``
field (``"epoch"``, ``"prune"``, ``"dropout"``, ``"best_epoch"``, ``"mask_update"``,
``"share"``); in
Python they are frozen dataclasses, so nothing reads a record by a string key or a tuple by
position.
:func:`record_from_dict` turns a JSON object back into its record.

Example:
    >>> r = EpochRecord(phase="train", iteration=0, epoch=1, global_epoch=1, loss=0.5,
    ...                 train_accuracy=0.9, val_loss=0.4, val_accuracy=0.91, lr=0.01,
    ...                 sparsity={"fc1": 0.0}, time_s=1.5)
    >>> record_from_dict(r.to_dict()) == r
    True
    >>> r.to_dict()["kind"]
    'epoch'
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "BestEpochEvent",
    "DropoutEvent",
    "EpochRecord",
    "Event",
    "MaskUpdateEvent",
    "PruneEvent",
    "Record",
    "SensitivityRow",
    "ShareEvent",
    "read_rows_csv",
    "record_from_dict",
    "write_rows_csv",
]


@dataclass(frozen=True)
class _Record:
    kind: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this record, ``kind`` included."""
        return {"kind": self.kind, **asdict(self)}


@dataclass(frozen=True)
class EpochRecord(_Record):
    """One training epoch: its place in the run, training and validation metrics.

    Attributes:
        phase: ``"train"`` (dense) or ``"retrain"``.
        iteration: phase index (0 for dense training, ``k`` for the k-th retraining).
        epoch: epoch within the phase, from 1.
        global_epoch: epoch within the run, from 1.
        loss, train_accuracy: means over the epoch's training batches.
        val_loss, val_accuracy: on the validation split after the epoch.
        lr: learning rate of the epoch's last step.
        sparsity: fraction of zero weights per pruned layer.
        time_s: seconds the epoch took (training and validation).
    """

    kind: ClassVar[str] = "epoch"
    phase: str
    iteration: int
    epoch: int
    global_epoch: int
    loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    sparsity: dict[str, float]
    time_s: float


@dataclass(frozen=True)
class PruneEvent(_Record):
    """A pruning step: what each layer kept, and what followed it.

    Attributes:
        iteration: schedule iteration, from 1.
        method: the criterion's name.
        layers: one :meth:`prunelab.pruner.LayerPruneResult.to_dict` per layer.
        after_epoch: epochs run before the event (orders events among epochs).
        dead_neurons: ``{layer: counts}`` when dead neurons were removed after the step.
        reinit: surviving weights were re-drawn (the ablation the paper argues against).
        schedule: ``"gradual"`` for a pruning made during training (None: at the start of
            the iteration's retraining, Han's schedule).
        step: for a pruning during training, the point of the schedule (steps or epochs of
            the iteration done, as its ``unit`` says).
        at_epoch: for a pruning during training, the epochs of the whole run done when it
            happened (fractional: 2.25 is a quarter into the third epoch).
    """

    kind: ClassVar[str] = "prune"
    iteration: int
    method: str
    layers: list[dict[str, Any]]
    after_epoch: int = 0
    dead_neurons: dict[str, dict[str, int]] | None = None
    reinit: bool = False
    schedule: str | None = None
    step: int | None = None
    at_epoch: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object, leaving out what did not happen (as earlier logs did)."""
        out = super().to_dict()
        for key in ("dead_neurons", "schedule", "step", "at_epoch"):
            if out[key] is None:
                del out[key]
        if not self.reinit:
            del out["reinit"]
        return out


@dataclass(frozen=True)
class DropoutEvent(_Record):
    """Han's dropout rule changed the retraining dropout rates.

    Attributes:
        iteration: schedule iteration, from 1.
        changes: one :meth:`prunelab.retrain_rules.DropoutChange.to_dict` per dropout module.
        after_epoch: epochs run before the event.
    """

    kind: ClassVar[str] = "dropout"
    iteration: int
    changes: list[dict[str, Any]]
    after_epoch: int = 0


@dataclass(frozen=True)
class BestEpochEvent(_Record):
    """A phase ended by restoring the weights of its best validation epoch.

    Attributes:
        iteration: phase index.
        epoch: the restored epoch within the phase.
        val_accuracy: its validation accuracy.
        after_epoch: epochs run before the event.
    """

    kind: ClassVar[str] = "best_epoch"
    iteration: int
    epoch: int
    val_accuracy: float
    after_epoch: int = 0


@dataclass(frozen=True)
class MaskUpdateEvent(_Record):
    """Dynamic network surgery changed masks during training (one event per epoch, and one
    for its start): :class:`prunelab.dns.SurgeryUpdate` with its place in the run.

    Attributes:
        iteration: schedule iteration, from 1.
        step_from, step_to: the iteration's steps covered, ``[from, to)``.
        updates: times the masks were recomputed; ``changed``: of those, how many changed one.
        pruned, spliced: per layer, entries pruned and spliced back.
        density: per layer, fraction of weights kept at the end.
        after_epoch: epochs run before the event.
        at_epoch: epochs of the run done at ``step_to`` (fractional).
    """

    kind: ClassVar[str] = "mask_update"
    iteration: int
    step_from: int
    step_to: int
    updates: int
    changed: int
    pruned: dict[str, int]
    spliced: dict[str, int]
    density: dict[str, float]
    after_epoch: int = 0
    at_epoch: float | None = None


@dataclass(frozen=True)
class ShareEvent(_Record):
    """Weight sharing began (the start of a ``share`` iteration): each layer's surviving
    weights were replaced by their k-means centroids.

    Attributes:
        iteration: schedule iteration, from 1.
        layers: per layer, :meth:`prunelab.sharing.LayerSharing.to_dict` (bits, clusters,
            surviving weights, largest change of a weight, k-means iterations).
        compression: storage of the shared weights as indices + codebooks against fp32
            (:attr:`prunelab.sharing.SharingReport.compression`, no entropy coding).
        after_epoch: epochs run before the event.
    """

    kind: ClassVar[str] = "share"
    iteration: int
    layers: list[dict[str, Any]]
    compression: float
    after_epoch: int = 0


Event = PruneEvent | DropoutEvent | BestEpochEvent | MaskUpdateEvent | ShareEvent
Record = EpochRecord | Event

_KINDS: dict[str, type[_Record]] = {
    c.kind: c for c in (EpochRecord, PruneEvent, DropoutEvent, BestEpochEvent, MaskUpdateEvent,
                        ShareEvent)
}


def record_from_dict(data: Mapping[str, Any]) -> Record:
    """The record a JSON object describes.

    Raises:
        ValueError: unknown ``kind``, or missing/unknown fields (the message names them).

    Example:
        >>> record_from_dict({"kind": "dropout", "iteration": 1, "changes": []}).iteration
        1
    """
    kind = data.get("kind")
    cls = _KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"record kind {kind!r} is unknown; allowed: {', '.join(_KINDS)}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - names - {"kind"})
    if unknown:
        raise ValueError(f"{kind} record has unknown fields {unknown}; allowed: {sorted(names)}")
    try:
        return cls(**{k: v for k, v in data.items() if k != "kind"})  # type: ignore[return-value]
    except TypeError as exc:
        raise ValueError(f"{kind} record is incomplete: {exc}") from None


@dataclass(frozen=True)
class SensitivityRow:
    """One point of one layer's sensitivity curve.

    Attributes:
        layer: module name of the layer pruned alone.
        mode: ``"q"`` or ``"sparsity"``: which quantity the grid set.
        value: the grid value.
        q: threshold of the point in units of the layer's weight std (for ``mode="q"`` the
            grid value; for ``mode="sparsity"`` the equivalent ``q``, i.e. the smallest kept
            ``|w|`` divided by the std, so both modes can suggest a ``q``).
        sparsity: fraction of the layer's weights that are zero at this point.
        val_accuracy: validation accuracy in [0, 1], no retraining.
        baseline_accuracy: validation accuracy of the model before any of the sweep's pruning.
    """

    layer: str
    mode: str
    value: float
    q: float
    sparsity: float
    val_accuracy: float
    baseline_accuracy: float

    def to_dict(self) -> dict[str, Any]:
        """JSON/CSV-friendly form."""
        return asdict(self)


_CSV_FIELDS = ("layer", "mode", "value", "q", "sparsity", "val_accuracy", "baseline_accuracy")




def write_rows_csv(rows: Iterable[SensitivityRow], path: str | Path) -> Path:
    """Write sweep rows as CSV (accuracies as fractions)."""
    p = Path(path)
    with p.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row.to_dict())
    return p


def read_rows_csv(path: str | Path) -> list[SensitivityRow]:
    """Read rows written by :func:`write_rows_csv`."""
    with Path(path).open(newline="") as fh:
        return [
            SensitivityRow(r["layer"], r["mode"], float(r["value"]), float(r["q"]),
                           float(r["sparsity"]), float(r["val_accuracy"]),
                           float(r["baseline_accuracy"]))
            for r in csv.DictReader(fh)
        ]
