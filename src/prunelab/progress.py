"""Progress reporting: rich progress bars with loss, accuracy and ETA, or silence.

Example:
    >>> r = RichReporter(quiet=True)
    >>> r.phase_start("train", 1, 10)
    >>> r.phase_end()
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .atomic import write_text_atomic
from .records import (
    BestEpochEvent,
    DropoutEvent,
    EpochRecord,
    Event,
    MaskUpdateEvent,
    PruneEvent,
    ShareEvent,
)

__all__ = ["JsonlLog", "RichReporter"]


class JsonlLog:
    """Append-only JSON-lines log of epoch records and events (rewritten on resume)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the log with ``records`` (after a resume, from the checkpoint)."""
        write_text_atomic(self.path,
                          "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))

    def append(self, record: dict[str, Any]) -> None:
        """Add one record."""
        with self.path.open("a") as fh:
            fh.write(json.dumps(record, sort_keys=True) + "\n")


class RichReporter:
    """A progress bar per phase; a line per epoch and per pruning event.

    Args:
        quiet: print nothing (for scripts and tests).
        log: optional :class:`JsonlLog` receiving every record.
        console: rich console to print to.
    """

    def __init__(self, quiet: bool = False, log: JsonlLog | None = None,
                 console: Console | None = None) -> None:
        self.quiet = quiet
        self.log = log
        self.console = console or Console(stderr=True)
        self._progress: Progress | None = None
        self._task: Any = None

    def phase_start(self, name: str, epochs: int, batches_per_epoch: int) -> None:
        """Open a bar for ``epochs * batches_per_epoch`` steps."""
        if self.quiet:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
            TimeRemainingColumn(), console=self.console, transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(name, total=max(1, epochs * batches_per_epoch),
                                             info="")

    def batch(self) -> None:
        """Advance the bar by one step."""
        if self._progress is not None:
            self._progress.advance(self._task)

    def epoch_end(self, record: EpochRecord) -> None:
        """Log an epoch record and print its line."""
        if self.log is not None:
            self.log.append(record.to_dict())
        if self.quiet:
            return
        r = record
        line = (
            f"{r.phase:>7} it {r.iteration} ep {r.epoch:>3}  loss {r.loss:.4f}  "
            f"train {100 * r.train_accuracy:.2f}%  val {100 * r.val_accuracy:.2f}%  "
            f"lr {r.lr:.2e}  ({r.time_s:.1f}s)"
        )
        if self._progress is not None:
            self._progress.update(
                self._task, info=f"loss {r.loss:.3f} val {100 * r.val_accuracy:.2f}%"
            )
            self._progress.console.print(line)
        else:
            self.console.print(line)

    def event(self, record: Event) -> None:
        """Log an event (prune, dropout change, best epoch) and print a summary."""
        if self.log is not None:
            self.log.append(record.to_dict())
        if self.quiet:
            return
        if isinstance(record, PruneEvent):
            parts = ", ".join(
                f"{r['layer']} {100 * (1 - r['sparsity_after']):.1f}%" for r in record.layers
            )
            removed = sum(v["removed"] for v in (record.dead_neurons or {}).values())
            where = f" ({record.schedule}, {record.step})" if record.schedule else ""
            self.console.print(
                f"[cyan]prune {record.iteration}{where}[/]: weights kept {parts}"
                + (f"; dead neurons removed: {removed}" if removed else "")
            )
        elif isinstance(record, MaskUpdateEvent):
            parts = ", ".join(f"{n} {100 * d:.1f}%" for n, d in record.density.items())
            self.console.print(
                f"[cyan]surgery {record.iteration}[/] steps {record.step_from}-{record.step_to}: "
                f"{record.updates} updates, pruned {sum(record.pruned.values())}, spliced "
                f"{sum(record.spliced.values())}; weights kept {parts}"
            )
        elif isinstance(record, ShareEvent):
            parts = ", ".join(f"{r['layer']} {r['clusters']} values ({r['bits']} bits)"
                              for r in record.layers)
            self.console.print(f"[cyan]share {record.iteration}[/]: {parts}; weights stored "
                               f"{record.compression:.1f}x smaller")
        elif isinstance(record, DropoutEvent):
            parts = ", ".join(
                f"{c['dropout']} {c['original']:.3f}->{c['retrain']:.3f}" for c in record.changes
            )
            self.console.print(f"[cyan]dropout rule[/]: {parts}")
        elif isinstance(record, BestEpochEvent):
            self.console.print(
                f"[cyan]phase {record.iteration}[/]: kept epoch {record.epoch} "
                f"(best validation accuracy {100 * record.val_accuracy:.2f}%)"
            )

    def phase_end(self) -> None:
        """Close the bar."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
