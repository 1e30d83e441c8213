"""Experiments: runs that train, prune and measure (Han pipeline, rethinking protocol,
sensitivity analysis, trade-off curves), each writing a self-describing run directory.
"""
