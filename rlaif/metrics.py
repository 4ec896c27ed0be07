"""How well an AI labeler agrees with human preference labels. Pure functions over arrays.

Notation: for pair i the labeler gives p_i = p(human-chosen response is better).

    accuracy  = mean_i  s_i,   s_i = 1 if p_i > 0.5,  0.5 if p_i = 0.5,  0 otherwise
    CI95      = 2.5th and 97.5th percentiles of accuracy over B bootstrap resamples of the pairs
    brier     = mean_i (1 − p_i)²
    ece       = Σ_b (n_b / N) · | mean_{j∈b} y_j − mean_{j∈b} q_j |   over 10 equal-width bins of q,
                computed on the 2n symmetric points {(q=p_i, y=1), (q=1−p_i, y=0)}: each pair read
                once from each side, so the number does not depend on which response was shown as A.

Position bias, from the per-order labels p_i^{ab}, p_i^{ba} (each p(a better) with a shown first
and with a shown second):

    position_flip_rate = mean_i  ½ · | side(p_i^{ab}) − side(p_i^{ba}) |,   side(p) = sign(p − 0.5)
    prefers_first_rate = mean over every single-order judgement of [first-shown reply wins]
                         (0.5 for an exact tie)

Exact ties in the flip rate: side(0.5) = 0 sits halfway between the two verdicts, so a pair decided
in one order and exactly tied in the other counts as half a flip, and a pair tied in both orders
(the same verdict either way) as none. This is the convention `accuracy` uses (a tie scores ½):
read a tie as a fair coin and a decided-vs-tied pair flips with probability ½. Counting it as a
whole flip (as a plain side-inequality would) charges a labeler that merely abstains in one order
as much as one that reverses itself; leaving such pairs out would hide them. How many pairs had a
tie in either order is reported next to the rate (`position_order_ties`).

Length bias: `prefers_longer_rate` is how often the reply the labeler prefers is the longer one (in
characters), over pairs with different lengths and a non-tied label; `human_prefers_longer_rate`
the same for the human's choice.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def agreement_scores(p_human: Sequence[float]) -> np.ndarray:
    """Per-pair score: 1 if the labeler sides with the human, 0.5 on an exact tie, else 0."""
    p = np.asarray(p_human, dtype=float)
    return np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0))


def accuracy(p_human: Sequence[float]) -> float:
    return float(agreement_scores(p_human).mean())


def bootstrap_ci(values: Sequence[float], n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values` (resampling pairs with replacement)."""
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def cluster_bootstrap_ci(values: Sequence[float], groups: Sequence, n_boot: int = 2000, seed: int = 0,
                         level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of `values`, resampling whole groups (e.g. every pair of
    one prompt together), so pairs that share a prompt are not counted as independent."""
    v = np.asarray(values, dtype=float)
    keys = list(dict.fromkeys(groups))
    index = {k: i for i, k in enumerate(keys)}
    g = np.array([index[x] for x in groups])
    sums = np.bincount(g, weights=v, minlength=len(keys))
    counts = np.bincount(g, minlength=len(keys)).astype(float)
    rng = np.random.default_rng(seed)
    draw = rng.integers(0, len(keys), size=(n_boot, len(keys)))
    means = sums[draw].sum(axis=1) / counts[draw].sum(axis=1)
    alpha = (1 - level) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their mean rank); None when either side is constant."""
    rx, ry = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    if len(rx) < 2 or rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):  # ties: their mean rank
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def brier(p_human: Sequence[float]) -> float:
    p = np.asarray(p_human, dtype=float)
    return float(((1 - p) ** 2).mean())


def calibration_bins(p_human: Sequence[float], n_bins: int = 10) -> list[dict]:
    """Reliability table over the symmetric points (p, 1) and (1 − p, 0): per bin the count, the
    mean predicted probability and the observed frequency. Bins are [k/10, (k+1)/10), the last
    closed."""
    p = np.asarray(p_human, dtype=float)
    q = np.concatenate([p, 1 - p])
    y = np.concatenate([np.ones_like(p), np.zeros_like(p)])
    idx = np.minimum((q * n_bins).astype(int), n_bins - 1)
    bins = []
    for b in range(n_bins):
        m = idx == b
        bins.append({"lo": b / n_bins, "hi": (b + 1) / n_bins, "count": int(m.sum()),
                     "mean_p": float(q[m].mean()) if m.any() else None,
                     "frequency": float(y[m].mean()) if m.any() else None})
    return bins


def ece(p_human: Sequence[float], n_bins: int = 10) -> float:
    bins = calibration_bins(p_human, n_bins)
    total = sum(b["count"] for b in bins)
    return float(sum(b["count"] / total * abs(b["frequency"] - b["mean_p"]) for b in bins if b["count"]))


def _side(p: np.ndarray) -> np.ndarray:
    return np.sign(p - 0.5)


def position_flips(p_ab: Sequence[float], p_ba: Sequence[float]) -> np.ndarray:
    """Per pair: 1 if the preferred side changes when the order is swapped, ½ if exactly one order is
    an exact tie, 0 otherwise (both orders agree, or both are exact ties): ½ |side(ab) − side(ba)|."""
    a, b = np.asarray(p_ab, dtype=float), np.asarray(p_ba, dtype=float)
    return 0.5 * np.abs(_side(a) - _side(b))


def position_flip_rate(p_ab: Sequence[float], p_ba: Sequence[float]) -> float:
    """Fraction of pairs whose preferred side changes when the order is swapped (ties: see above)."""
    return float(position_flips(p_ab, p_ba).mean())


def order_ties(p_ab: Sequence[float], p_ba: Sequence[float]) -> int:
    """How many pairs are an exact tie (p = 0.5) in at least one order."""
    a, b = np.asarray(p_ab, dtype=float), np.asarray(p_ba, dtype=float)
    return int(((a == 0.5) | (b == 0.5)).sum())


def prefers_first_rate(p_first: Sequence[float]) -> float:
    """`p_first`: p(the first-shown reply is better) for each single-order judgement."""
    return accuracy(p_first)


def _longer_rate(picked_len: np.ndarray, other_len: np.ndarray) -> float | None:
    m = picked_len != other_len
    return float((picked_len[m] > other_len[m]).mean()) if m.any() else None


def prefers_longer_rate(p_a: Sequence[float], len_a: Sequence[int], len_b: Sequence[int]) -> float | None:
    """How often the labeler's preferred reply (p(a) > 0.5 -> a, < 0.5 -> b; ties left out) is the
    longer one, over pairs of different lengths."""
    p, la, lb = (np.asarray(x, dtype=float) for x in (p_a, len_a, len_b))
    m = p != 0.5
    picked = np.where(p > 0.5, la, lb)[m]
    other = np.where(p > 0.5, lb, la)[m]
    return _longer_rate(picked, other)


def human_prefers_longer_rate(len_chosen: Sequence[int], len_rejected: Sequence[int]) -> float | None:
    return _longer_rate(np.asarray(len_chosen, dtype=float), np.asarray(len_rejected, dtype=float))
