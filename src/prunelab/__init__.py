"""prunelab: learn which connections matter.

Faithful, measurable implementations of Han et al. 2015 ("Learning both Weights and
Connections for Efficient Neural Networks") and Liu et al. 2019 ("Rethinking the Value of
Network Pruning").
"""

__version__ = "0.1.0"
