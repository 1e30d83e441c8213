"""Weight sharing of a saved model (``prunelab share``): k-means codebooks per layer, centroid
fine-tuning on the file's own training split, the epoch kept by validation error.

Deep Compression's second stage (Han et al. 2016) applied to any pruned model file, such as a
run's ``model.safetensors``; ``prunelab export OUT --format compressed`` then writes the
Huffman-coded file. Within a run, the same is a ``share:`` schedule entry.

Example:
    >>> from prunelab.experiments.share import ShareSettings
    >>> ShareSettings(bits={"fc": 5}, epochs=1).lr
    0.0001
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data import TensorBatches, splits_for_model_file
from ..masks import load_pruned_state_dict
from ..modelfile import load_model_file, save_model_file
from ..sharing import INITS, WeightSharing
from ..sharing.bits import BitsSpec, check_spec
from ..training import Trainer, make_optimizer
from .evaluation import test_error

__all__ = ["ShareResult", "ShareSettings", "share_model_file"]

_OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class ShareSettings:
    """How to share and fine-tune.

    Attributes:
        bits: index width per layer (``None``: 8 conv, 5 fc; see
            :func:`prunelab.sharing.resolve_bits`).
        layers: glob patterns of the layers to share (all Linear/Conv layers when ``None``).
        init: centroid initialisation (``linear``, ``density``, ``random``).
        epochs: epochs of centroid fine-tuning (0: share only).
        lr: learning rate of the centroids (their gradients are sums over members: small).
        optimizer: ``sgd`` (momentum 0.9) or ``adam``.
        batch_size: training batch size.
        seed: seed of the batch order and of ``init="random"``.
    """

    bits: BitsSpec = None
    layers: tuple[str, ...] | None = None
    init: str = "linear"
    epochs: int = 1
    lr: float = 1e-4
    optimizer: str = "sgd"
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        check_spec(self.bits)
        if self.init not in INITS:
            raise ValueError(f"init {self.init!r} is unknown; allowed: {', '.join(INITS)}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer {self.optimizer!r} is unknown; allowed: "
                             f"{', '.join(_OPTIMIZERS)}")
        if isinstance(self.epochs, bool) or not isinstance(self.epochs, int) or self.epochs < 0:
            raise ValueError(f"epochs={self.epochs!r} is invalid; allowed: an integer >= 0")
        if not self.lr > 0:
            raise ValueError(f"lr={self.lr!r} is invalid; allowed: a number > 0")
        if isinstance(self.batch_size, bool) or self.batch_size < 1:
            raise ValueError(f"batch_size={self.batch_size!r} is invalid; allowed: >= 1")


@dataclass
class ShareResult:
    """Errors (percent) before and after, the kept epoch, the per-layer report."""

    source: str
    out: str
    val_error_source: float
    test_error_source: float
    val_error_shared: float
    test_error_shared: float
    val_error: float
    test_error: float
    best_epoch: int
    epochs: list[dict[str, float]] = field(default_factory=list)
    sharing: dict[str, Any] = field(default_factory=dict)
    time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def _snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _errors(model: torch.nn.Module, splits: Any) -> tuple[float, float]:
    """Validation and test error in percent."""
    return (test_error(model, splits.x_val, splits.y_val),
            test_error(model, splits.x_test, splits.y_test))


def share_model_file(
    path: str | Path,
    out: str | Path,
    settings: ShareSettings = ShareSettings(),
    *,
    data_root: str | None = None,
    device: str = "cpu",
    allow_import: bool = False,
) -> ShareResult:
    """Share the weights of a model file, fine-tune the centroids, write the result.

    The epoch written is the one of lowest validation error among "shared, not tuned" and
    each fine-tuning epoch; the test error is measured for the record only.

    Args:
        path: a model file (``model.safetensors`` of a run).
        out: the file to write (a model file: ``prunelab evaluate`` / ``export`` read it).
        settings: :class:`ShareSettings`.
        data_root: dataset root (default: the shipped data / ``PRUNELAB_DATA``).
        device: ``cpu`` or ``cuda``.
        allow_import: as for :func:`prunelab.modelfile.load_model_file`.

    Raises:
        ValueError: bad settings, a layer pattern matching nothing, an image-folder model
            (share it inside its run with a ``share:`` schedule entry).
    """
    t0 = time.perf_counter()
    model, meta = load_model_file(path, device=device, allow_import=allow_import)
    dataset = dict(meta.get("dataset") or {})
    if dataset.get("name") == "imagefolder":
        raise ValueError(f"{str(path)!r} was trained on an image folder; prunelab share "
                         "fine-tunes in-memory datasets (mnist, fashion-mnist); for image "
                         "folders add a share: entry to the run's schedule")
    splits = splits_for_model_file(meta, data_root=data_root, device=device)
    val0, test0 = _errors(model, splits)
    sharing = WeightSharing(settings.bits, layers=list(settings.layers or []) or None,
                            init=settings.init, seed=settings.seed)
    optimizer = make_optimizer(model.parameters(), settings.optimizer, lr=settings.lr)
    report = sharing.attach(model, optimizer)
    val, test = _errors(model, splits)
    shared = (val, test)
    best = (val, 0, _snapshot(model))
    epochs: list[dict[str, float]] = [{"epoch": 0, "val_error": val, "test_error": test}]
    batches = TensorBatches(splits.x_train, splits.y_train, batch_size=settings.batch_size)
    trainer = Trainer(model, optimizer, callbacks=[sharing])
    for epoch in range(settings.epochs):
        stats = trainer.fit(batches, epochs=epoch + 1, start_epoch=epoch,
                            seed_of_epoch=lambda e: settings.seed * 1000 + e)
        val, test = _errors(model, splits)
        epochs.append({"epoch": epoch + 1, "val_error": val, "test_error": test,
                       "loss": stats[-1].loss})
        if val < best[0]:
            best = (val, epoch + 1, _snapshot(model))
    sharing.detach()
    load_pruned_state_dict(model, best[2])
    val, test = _errors(model, splits)
    result = ShareResult(
        source=str(path), out=str(out), val_error_source=val0, test_error_source=test0,
        val_error_shared=shared[0], test_error_shared=shared[1], val_error=val,
        test_error=test, best_epoch=best[1], epochs=epochs, sharing=report.to_dict(),
        time_s=time.perf_counter() - t0,
    )
    extra = {"sharing": {"settings": {**asdict(settings), "layers": settings.layers},
                         "result": {k: v for k, v in result.to_dict().items()
                                    if k not in ("sharing", "epochs")}}}
    save_model_file(out, model, meta["model"], dataset=dataset, extra=extra)
    return result
