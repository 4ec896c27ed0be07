"""Agreement between people, and between a judge and people, on A/B preference labels.

Every label becomes a verdict: 1 if it leans to reply a (p_a > 0.5), 0 if to reply b. (The 8-point
scale has no middle, so a person never ties; a judge's exact 0.5 counts half, as in
`rlaif.metrics.agreement_scores`.)

    pairwise agreement   over every item and every two people who both labeled it: the share of
                         such two-person comparisons that agree
    Cohen's kappa        two raters, the items both labeled:  κ = (p_o − p_e) / (1 − p_e),
                         p_o = share agreeing, p_e = Σ_c p₁(c)·p₂(c) from each rater's own rates
    Fleiss' kappa        many raters; item i has n_i ≥ 2 ratings, n_ic of them in category c:
                         P_i = (Σ_c n_ic² − n_i) / (n_i (n_i − 1)),  P̄ = mean_i P_i,
                         p_c = Σ_i n_ic / Σ_i n_i,  P̄_e = Σ_c p_c²,  κ = (P̄ − P̄_e) / (1 − P̄_e)
                         (with the same n on every item this is Fleiss (1971); items with more
                         people are not weighted more)
    majority             the side most people on an item chose; an even split has none
    leave-one-out        AlpacaEval's "human agreement": hold each person out of an item, take
                         the majority of the others (items where it exists), and score the held-out
                         person against it; the judge is scored against the same majorities, so
                         both numbers come from the same comparisons

Confidence intervals are percentile bootstraps that resample items (all comparisons of an item
move together, since they share the item).
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations
from typing import Mapping, Sequence

import numpy as np


def verdict(p_a: float) -> int | None:
    """1: reply a, 0: reply b, None: an exact tie."""
    return None if p_a == 0.5 else int(p_a > 0.5)


def judge_score(p_a: float, side: int) -> float:
    """1 if the judge's p_a leans to `side`, 0 if away, 0.5 on an exact tie."""
    return 0.5 if p_a == 0.5 else float(int(p_a > 0.5) == side)


def cohen_kappa(x: Sequence, y: Sequence) -> float | None:
    """Cohen's kappa of two raters over the same items (any hashable categories).
    None when it is undefined (both raters used one and the same category throughout: p_e = 1)."""
    if len(x) != len(y) or not x:
        raise ValueError("cohen_kappa: expected two equally long, non-empty sequences")
    n = len(x)
    po = sum(a == b for a, b in zip(x, y)) / n
    cx, cy = Counter(x), Counter(y)
    pe = sum(cx[c] * cy[c] for c in cx) / (n * n)
    return None if pe == 1 else (po - pe) / (1 - pe)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float | None:
    """Fleiss' kappa from a table: one row per item, one column per category, entries are how many
    raters put the item in that category (rows with fewer than 2 ratings are left out).
    None when undefined (no usable rows, or every rating in one category)."""
    rows = [list(r) for r in counts if sum(r) >= 2]
    if not rows:
        return None
    per_item = [(sum(c * c for c in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows]
    p_bar = sum(per_item) / len(per_item)
    total = sum(sum(r) for r in rows)
    p_e = sum((sum(r[j] for r in rows) / total) ** 2 for j in range(len(rows[0])))
    return None if p_e == 1 else (p_bar - p_e) / (1 - p_e)


def majority(votes: Sequence[int]) -> int | None:
    """The side most votes chose; None on an even split or no votes."""
    ones = sum(votes)
    zeros = len(votes) - ones
    return None if ones == zeros else int(ones > zeros)


def cluster_bootstrap(scores: Sequence[Sequence[float]], n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> tuple[float | None, list[float | None]]:
    """Mean over all scores, and a percentile CI from resampling the items (the inner lists)."""
    scores = [list(s) for s in scores if len(s)]
    if not scores:
        return None, [None, None]
    sums = np.array([sum(s) for s in scores], dtype=float)
    counts = np.array([len(s) for s in scores], dtype=float)
    mean = float(sums.sum() / counts.sum())
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(scores), size=(n_boot, len(scores)))
    boots = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return mean, [float(lo), float(hi)]


def by_item(labels: Sequence[dict]) -> dict[str, dict[str, int]]:
    """{pair_id: {annotator: verdict}} from labels with a p_a (exact ties left out)."""
    out: dict[str, dict[str, int]] = {}
    for x in labels:
        if x.get("p_a") is None:
            continue
        v = verdict(x["p_a"])
        if v is not None:
            out.setdefault(x["pair_id"], {})[x["annotator"]] = v
    return out


def human_agreement(items: Mapping[str, Mapping[str, int]], seed: int = 0) -> dict:
    """Human–human: pairwise agreement (with CI), Cohen's kappa for every two annotators who share
    items, their mean, and Fleiss' kappa over items with at least two people."""
    comparisons = [[float(a == b) for a, b in combinations(list(v.values()), 2)] for v in items.values()]
    pairwise, ci = cluster_bootstrap(comparisons, seed=seed)
    names = sorted({a for v in items.values() for a in v})
    pairs = []
    for a, b in combinations(names, 2):
        shared = [(v[a], v[b]) for v in items.values() if a in v and b in v]
        if shared:
            xs, ys = zip(*shared)
            pairs.append({"annotators": [a, b], "n": len(shared), "agreement": sum(x == y for x, y in shared) / len(shared),
                          "cohen_kappa": cohen_kappa(xs, ys)})
    kappas = [p["cohen_kappa"] for p in pairs if p["cohen_kappa"] is not None]
    table = [[sum(1 for x in v.values() if x == 0), sum(1 for x in v.values() if x == 1)] for v in items.values()]
    return {"items_with_two_or_more": sum(len(v) >= 2 for v in items.values()),
            "comparisons": sum(len(c) for c in comparisons), "pairwise_agreement": pairwise,
            "pairwise_agreement_ci95": ci, "cohen_kappa_mean": sum(kappas) / len(kappas) if kappas else None,
            "annotator_pairs": pairs, "fleiss_kappa": fleiss_kappa(table)}


def leave_one_out(items: Mapping[str, Mapping[str, int]], judge: Mapping[str, float] | None = None,
                  seed: int = 0) -> dict:
    """AlpacaEval-style held-out agreement: each person against the majority of the others on the
    item, and the judge against the same majorities."""
    human, machine = [], []
    for pid, votes in items.items():
        h, m = [], []
        for who, v in votes.items():
            maj = majority([x for other, x in votes.items() if other != who])
            if maj is None:
                continue
            h.append(float(v == maj))
            if judge is not None and pid in judge:
                m.append(judge_score(judge[pid], maj))
        human.append(h)
        machine.append(m)
    h_mean, h_ci = cluster_bootstrap(human, seed=seed)
    j_mean, j_ci = cluster_bootstrap(machine, seed=seed)
    return {"n": sum(len(h) for h in human), "items": sum(bool(h) for h in human), "human": h_mean,
            "human_ci95": h_ci, "judge": j_mean, "judge_ci95": j_ci}


def judge_vs_annotators(items: Mapping[str, Mapping[str, int]], judge: Mapping[str, float], seed: int = 0) -> dict:
    """The judge's agreement (with CI) and Cohen's kappa against each annotator, on their items."""
    out = {}
    for name in sorted({a for v in items.values() for a in v}):
        shared = [(judge[pid], v[name]) for pid, v in items.items() if name in v and pid in judge]
        if not shared:
            continue
        mean, ci = cluster_bootstrap([[judge_score(p, s)] for p, s in shared], seed=seed)
        decided = [(int(p > 0.5), s) for p, s in shared if p != 0.5]
        out[name] = {"n": len(shared), "agreement": mean, "agreement_ci95": ci,
                     "cohen_kappa": cohen_kappa(*zip(*decided)) if decided else None}
    return out

