"""Agreement maths on examples small enough to check by hand, and the 8-point scale's mapping."""

import pytest

from rlaif.annotate import agreement as A
from rlaif.annotate import scale


def test_cohen_kappa_by_hand():
    # 50 items, two raters, yes/no: 20 both yes, 15 both no, 5 only rater 1 yes, 10 only rater 2 yes.
    # p_o = 35/50 = 0.7; rater 1 says yes 25/50, rater 2 says yes 30/50;
    # p_e = 0.5·0.6 + 0.5·0.4 = 0.5;  κ = (0.7 − 0.5) / (1 − 0.5) = 0.4
    x = ["y"] * 20 + ["n"] * 15 + ["y"] * 5 + ["n"] * 10
    y = ["y"] * 20 + ["n"] * 15 + ["n"] * 5 + ["y"] * 10
    assert A.cohen_kappa(x, y) == pytest.approx(0.4)
    # perfect agreement is 1; exactly the agreement chance predicts is 0
    assert A.cohen_kappa([1, 0, 1, 0], [1, 0, 1, 0]) == pytest.approx(1.0)
    # p_o = 2/4, p_e = 0.5·0.5 + 0.5·0.5 = 0.5 -> 0
    assert A.cohen_kappa([1, 1, 0, 0], [1, 0, 1, 0]) == pytest.approx(0.0)
    # systematic disagreement is negative: p_o = 0, p_e = 0.5 -> −1
    assert A.cohen_kappa([1, 0, 1, 0], [0, 1, 0, 1]) == pytest.approx(-1.0)
    assert A.cohen_kappa([1, 1, 1], [1, 1, 1]) is None  # p_e = 1: undefined


def test_fleiss_kappa_by_hand():
    # Four items, three raters, two categories: [3,0], [0,3], [2,1], [1,2].
    # P_i = (Σ n² − 3) / 6 = 1, 1, 1/3, 1/3 -> P̄ = 2/3;  p = (6/12, 6/12) -> P̄_e = 0.5;
    # κ = (2/3 − 1/2) / (1/2) = 1/3
    assert A.fleiss_kappa([[3, 0], [0, 3], [2, 1], [1, 2]]) == pytest.approx(1 / 3)
    # Fleiss' (1971) style worked example: 10 items, 14 raters, 5 categories; P̄ = 0.378, P̄_e = 0.2128
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert A.fleiss_kappa(table) == pytest.approx((0.378 - 0.21275) / (1 - 0.21275), abs=1e-3)
    assert A.fleiss_kappa(table) == pytest.approx(0.210, abs=1e-3)
    # two raters on every item: Fleiss' κ uses pooled category rates, so it is Scott's π:
    # items (1,1), (0,0), (1,0), (1,1): P̄ = 3/4, p(1) = 5/8 -> P̄_e = 25/64 + 9/64 = 34/64; π = (3/4 − 34/64)/(30/64) = 7/15
    assert A.fleiss_kappa([[0, 2], [2, 0], [1, 1], [0, 2]]) == pytest.approx(7 / 15)
    assert A.fleiss_kappa([[1, 0], [0, 1]]) is None  # nobody rated an item twice


def test_majority_pairwise_and_leave_one_out_by_hand():
    # item 1: x and y say a, z says b;  item 2: all three say b;  item 3: only x labeled it
    items = {"i1": {"x": 1, "y": 1, "z": 0}, "i2": {"x": 0, "y": 0, "z": 0}, "i3": {"x": 1}}
    assert A.majority([1, 1, 0]) == 1 and A.majority([1, 0]) is None and A.majority([]) is None
    h = A.human_agreement(items)
    # two-person comparisons: i1: (x,y) agree, (x,z) no, (y,z) no; i2: 3 agree -> 4 of 6
    assert h["pairwise_agreement"] == pytest.approx(4 / 6) and h["comparisons"] == 6
    assert h["items_with_two_or_more"] == 2
    # Fleiss over i1, i2: P = 1/3, 1 -> 2/3; p(b) = 4/6, p(a) = 2/6 -> P̄_e = 5/9; κ = (2/3 − 5/9)/(4/9) = 1/4
    assert h["fleiss_kappa"] == pytest.approx(0.25)
    xy = next(p for p in h["annotator_pairs"] if p["annotators"] == ["x", "y"])
    assert xy["n"] == 2 and xy["agreement"] == 1.0 and xy["cohen_kappa"] == pytest.approx(1.0)
    # leave one out: i1: x vs (y a, z b) tie -> none; y likewise; z vs (a, a) -> disagrees; i2: 3 agree
    judge = {"i1": 0.9, "i2": 0.2, "i3": 0.5}
    loo = A.leave_one_out(items, judge)
    assert loo["n"] == 4 and loo["human"] == pytest.approx(3 / 4)
    assert loo["judge"] == pytest.approx(1.0)  # a on i1 (once), b on i2 (three times)
    lo, hi = loo["human_ci95"]
    assert 0 <= lo <= 3 / 4 <= hi <= 1
    per = A.judge_vs_annotators(items, judge)
    # x: i1 agree, i2 agree, i3 judge tie = 0.5 -> 2.5/3; z: i1 disagree, i2 agree -> 1/2
    assert per["x"]["agreement"] == pytest.approx(2.5 / 3) and per["z"]["agreement"] == pytest.approx(0.5)


def test_scale_maps_eight_points_to_p_and_unblinds():
    assert [scale.p_first(k) for k in scale.POINTS] == [0.9375, 0.8125, 0.6875, 0.5625, 0.4375, 0.3125, 0.1875, 0.0625]
    assert scale.to_pair_terms(2, flipped=True) == 7 and scale.to_pair_terms(2, flipped=False) == 2
    with pytest.raises(ValueError):
        scale.p_first(0)
