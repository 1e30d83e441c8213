"""What weight sharing did to each layer: clusters, bits, surviving weights, error, size.

Example:
    >>> row = LayerSharing("fc1", "fc", 5, 32, 1000, 4000, 0.01, 7, True, 32)
    >>> round(row.compression, 2)  # 1000 * 32 bits -> 1000 * 5 + 32 * 32 bits
    5.31
    >>> print(SharingReport((row,)).table())
    layer  kind  bits  clusters  surviving/total  max |w-c|  iters  compression
    fc1    fc       5        32        1000/4000   1.00e-02      7        5.31x
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["LayerSharing", "SharingReport"]


@dataclass(frozen=True)
class LayerSharing:
    """One layer's weight sharing.

    Attributes:
        layer: module name (the tensor is ``<layer>.weight``).
        kind: ``"fc"`` or ``"conv"``.
        bits: index width; at most ``2**bits`` shared values.
        clusters: shared values in use (distinct codebook entries with members); fewer than
            ``2**bits`` when the layer has fewer distinct surviving weights.
        surviving: weights that are shared (unmasked, or nonzero in an unmasked layer).
        total: entries of the weight.
        max_error: ``max |w - centroid|`` over the surviving weights when they were shared,
            before any fine-tuning (0 for a layer that already had few enough values).
        iterations: k-means centroid updates (0 when loaded from a state or already shared).
        converged: whether k-means stopped because the assignment no longer changed.
        weight_bits: bits of one stored weight (32 for float32).
    """

    layer: str
    kind: str
    bits: int
    clusters: int
    surviving: int
    total: int
    max_error: float
    iterations: int
    converged: bool
    weight_bits: int = 32

    @property
    def compression(self) -> float:
        """The paper's ratio (Sec. 3, eq. 1): ``n b / (n log2 k + k b)``, with ``log2 k`` the
        index width and ``k`` the codebook entries in use; 1.0 for an empty layer."""
        if not self.surviving:
            return 1.0
        stored = self.surviving * self.bits + self.clusters * self.weight_bits
        return self.surviving * self.weight_bits / stored

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (with ``compression``)."""
        return {**asdict(self), "compression": self.compression}


@dataclass(frozen=True)
class SharingReport:
    """Per-layer :class:`LayerSharing` rows, in module order."""

    layers: tuple[LayerSharing, ...]

    def __getitem__(self, layer: str) -> LayerSharing:
        """The row of one layer.

        Raises:
            KeyError: no such layer (the message lists them).
        """
        for row in self.layers:
            if row.layer == layer:
                return row
        raise KeyError(f"no shared layer {layer!r}; shared layers: "
                       f"{', '.join(r.layer for r in self.layers)}")

    @property
    def compression(self) -> float:
        """The ratio of :attr:`LayerSharing.compression` over all layers together."""
        dense = sum(r.surviving * r.weight_bits for r in self.layers)
        stored = sum(r.surviving * r.bits + r.clusters * r.weight_bits
                     for r in self.layers if r.surviving)
        return dense / stored if stored else 1.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"compression": self.compression, "layers": [r.to_dict() for r in self.layers]}

    def table(self) -> str:
        """One line per layer, aligned (plain text)."""
        head = ("layer", "kind", "bits", "clusters", "surviving/total", "max |w-c|", "iters",
                "compression")
        rows = [
            (r.layer, r.kind, str(r.bits), str(r.clusters), f"{r.surviving}/{r.total}",
             f"{r.max_error:.2e}", str(r.iterations) + ("" if r.converged else "*"),
             f"{r.compression:.2f}x")
            for r in self.layers
        ]
        widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
        left = {0, 1}
        lines = [
            "  ".join(c.ljust(w) if i in left else c.rjust(w)
                      for i, (c, w) in enumerate(zip(line, widths, strict=True))).rstrip()
            for line in (head, *rows)
        ]
        if any(not r.converged for r in self.layers):
            lines.append("* k-means stopped at max_iter before the assignment settled")
        return "\n".join(lines)
