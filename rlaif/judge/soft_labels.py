"""Reading the judge's answers: the soft label of a pairwise question from the options'
log-probabilities, the CoT clamp, votes averaged over principles and orders, and the 1-10
distribution and normalised score of a direct question (the maths: rlaif/judge/judge.py and
rlaif/judge/scoring.py). Pure functions over numbers."""

from __future__ import annotations

import math
from typing import Sequence

OPTIONS = ("A", "B")
DIGITS = tuple(str(d) for d in range(1, 10))
TEN = "10"  # a first-token option only where the tokenizer has it as one token


def soft_label(logprobs: dict[str, float], options: Sequence[str] = OPTIONS) -> float:
    """P(first option) = softmax over the options' log-probabilities (normalised over options only)."""
    la, lb = logprobs[options[0]], logprobs[options[1]]
    m = max(la, lb)
    if m == -math.inf:
        return 0.5
    ea, eb = math.exp(la - m), math.exp(lb - m)
    return ea / (ea + eb)


def clamp(p: float, band: tuple[float, float]) -> float:
    return min(max(p, band[0]), band[1])


def p_a_from_vote(p_option_a: float, order: str) -> float:
    """p(a ≻ b) from P(option A) of one order: "ab" shows a as (A), "ba" shows b as (A)."""
    return p_option_a if order == "ab" else 1.0 - p_option_a


def aggregate(votes: Sequence[dict]) -> tuple[float, dict]:
    """Mean p(a ≻ b) over all votes, and the per-order means (None where an order is absent)."""
    p = sum(v["p_a"] for v in votes) / len(votes)
    by_order = {}
    for order in ("ab", "ba"):
        vs = [v["p_a"] for v in votes if v["order"] == order]
        by_order[order] = sum(vs) / len(vs) if vs else None
    return p, by_order


def score_distribution(first_digit: dict[str, float], zero_after_one: float) -> list[float]:
    """p(score = k) for k = 1..10.

    `first_digit`: log-probabilities of the next token being "1".."9", and "10" where the tokenizer
    has that as one token (absent or −inf otherwise); `zero_after_one`: the log-probability of "0"
    right after "1" (full-vocabulary, not normalised over options).
        p̃ = softmax over the first-token options,  q = exp(zero_after_one) (≤ 1)
        p(1) = p̃₁ (1 − q),   p(10) = p̃₁₀ + p̃₁ q,   p(k) = p̃_k for k = 2..9
    """
    logps = [first_digit[d] for d in DIGITS] + [first_digit.get(TEN, -math.inf)]
    m = max(logps)
    w = [math.exp(x - m) for x in logps]
    z = sum(w)
    p = [x / z for x in w]
    q = min(max(math.exp(zero_after_one), 0.0), 1.0)
    return [p[0] * (1 - q)] + p[1:9] + [p[9] + p[0] * q]


def expected_score(dist: Sequence[float]) -> float:
    """Probability-weighted mean score on 1..10, normalised to [0, 1]: (E[k] − 1) / 9."""
    e = sum(k * pk for k, pk in zip(range(1, 11), dist))
    return (e - 1) / 9


def pair_label_from_scores(s_a: float, s_b: float) -> float:
    """Direct scores (each in [0, 1]) -> p(a ≻ b) = ½ (1 + s_a − s_b)."""
    return 0.5 * (1.0 + s_a - s_b)


__all__ = ["OPTIONS", "DIGITS", "TEN", "soft_label", "clamp", "p_a_from_vote", "aggregate", "score_distribution",
           "expected_score", "pair_label_from_scores"]
