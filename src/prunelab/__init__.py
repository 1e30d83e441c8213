"""prunelab: learn which connections matter.

Faithful, measurable implementations of Han et al. 2015 ("Learning both Weights and
Connections for Efficient Neural Networks") and Liu et al. 2019 ("Rethinking the Value of
Network Pruning").
"""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """Import the public calls lazily (``import prunelab`` stays fast)."""
    if name == "prune_channels":
        from .channel_pruning import prune_channels

        return prune_channels
    raise AttributeError(f"module 'prunelab' has no attribute {name!r}")


__all__ = ["__version__", "prune_channels"]
