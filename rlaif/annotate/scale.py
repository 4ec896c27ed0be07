"""The 8-point comparison scale of the annotation page and what each point means as a probability.

Point k (1..8) runs from "A is much better" (1) to "B is much better" (8); there is no middle
point, so every answer leans one way. Point k stands for the centre of the k-th of eight equal
bins of [0, 1], read from the top:

    p(A better) = (8.5 − k) / 8      ->  0.9375, 0.8125, 0.6875, 0.5625, 0.4375, 0.3125, 0.1875, 0.0625

so "negligibly better or unsure" (4 or 5) is a label of 0.5625 / 0.4375, close to a coin, and "much
better" (1 or 8) is 0.9375 / 0.0625, confident but never certain. The page shows the replies on
blinded sides; a label is stored in the pair's own terms (reply a vs reply b), so `p_a` below is
p(the pair's reply a is better).
"""

from __future__ import annotations

POINTS = range(1, 9)
LABELS = {
    1: "A is much better", 2: "A is better", 3: "A is slightly better", 4: "A is negligibly better or unsure",
    5: "B is negligibly better or unsure", 6: "B is slightly better", 7: "B is better", 8: "B is much better",
}


def p_first(point: int) -> float:
    """p(the reply shown as A is better) for a point on the scale."""
    if point not in POINTS:
        raise ValueError(f"scale point {point!r}: expected an integer 1..8")
    return (8.5 - point) / 8


def to_pair_terms(point: int, flipped: bool) -> int:
    """A point given on the shown sides -> the same judgement with reply a as A.
    `flipped`: the page showed the pair's reply b as A."""
    return 9 - point if flipped else point


def p_a(point: int) -> float:
    """p(reply a is better) for a point already in the pair's terms."""
    return p_first(point)
