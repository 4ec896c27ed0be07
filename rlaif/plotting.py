"""matplotlib for files, not screens: every plot the package writes (training curves, reports)
gets pyplot from here, on the Agg backend, imported only when a plot is drawn."""

from __future__ import annotations


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


__all__ = ["pyplot"]
