"""Labeler-vs-human metrics against values computed by hand."""

from __future__ import annotations

import pytest

from rlaif import metrics as M


def test_accuracy_counts_exact_ties_as_half():
    assert M.accuracy([0.9, 0.5, 0.2, 0.6]) == pytest.approx((1 + 0.5 + 0 + 1) / 4)
    assert list(M.agreement_scores([0.51, 0.5, 0.49])) == [1.0, 0.5, 0.0]


def test_brier():
    assert M.brier([0.9, 0.5, 0.2, 0.6]) == pytest.approx((0.01 + 0.25 + 0.64 + 0.16) / 4)


def test_ece_on_symmetric_points_by_hand():
    # points (0.9,1) (0.1,0) (0.3,1) (0.7,0): one per bin, gaps .1 .1 .7 .7
    assert M.ece([0.9, 0.3]) == pytest.approx(0.4)
    # (0.95,1) (0.92,1) share bin 9: |1 − 0.935| twice; mirrored in bin 0; (0.15,1) and (0.85,0): 0.85 each
    assert M.ece([0.95, 0.92, 0.15]) == pytest.approx((0.065 * 4 + 0.85 * 2) / 6)
    # a perfectly calibrated labeler: p = 0.75, right 3 times in 4
    assert M.ece([0.75, 0.75, 0.75, 0.25]) == pytest.approx(0.0, abs=1e-12)
    bins = M.calibration_bins([0.75, 0.75, 0.75, 0.25])
    assert sum(b["count"] for b in bins) == 8 and bins[7]["frequency"] == pytest.approx(0.75)


def test_bootstrap_ci_contains_the_estimate_and_narrows_with_n():
    scores = M.agreement_scores([0.8, 0.3, 0.6, 0.7, 0.5, 0.1, 0.9, 0.65, 0.55, 0.45] * 5)
    lo, hi = M.bootstrap_ci(scores, seed=1)
    est = float(scores.mean())
    assert lo <= est <= hi and lo < hi
    assert M.bootstrap_ci(scores, seed=1) == (lo, hi)  # seeded
    lo4, hi4 = M.bootstrap_ci(list(scores) * 4, seed=1)
    assert hi4 - lo4 < hi - lo
    assert M.bootstrap_ci([1.0] * 20) == (1.0, 1.0)


def test_position_flip_rate():
    # sides: (+,+) (+,−) (−,−) (tie,+): a flip on the second, half a flip on the fourth
    assert M.position_flip_rate([0.7, 0.6, 0.4, 0.5], [0.8, 0.3, 0.45, 0.6]) == pytest.approx(1.5 / 4)


def test_prefers_first_rate():
    assert M.prefers_first_rate([0.9, 0.2, 0.5]) == pytest.approx(0.5)


def test_length_bias_rates():
    # picks a (10 > 5): longer; picks b (20 > 10): longer; tie label: out; equal lengths: out;
    # picks b (4 < 30): shorter
    assert M.prefers_longer_rate([0.8, 0.3, 0.5, 0.9, 0.2], [10, 10, 5, 7, 30], [5, 20, 9, 7, 4]) == pytest.approx(2 / 3)
    assert M.human_prefers_longer_rate([10, 3, 5], [5, 8, 5]) == pytest.approx(0.5)
    assert M.human_prefers_longer_rate([5], [5]) is None
