"""The rate stage (UltraFeedback-style): ratings per aspect from the judge's score distribution,
binarisation (best by mean rating against a seeded random other, ties left out, the margin kept),
rankings by ratings or by pairwise labels, resumption, inputs in both shapes, and one-line errors.
The judge is the test-only rule judge (tests/support/rule_judge.py): "shorter" puts 0.9 on the digit
clamp(9 − words // 6, 1, 9), so each reply's expected rating is known."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rule_judge import RuleJudge, length_digit  # noqa: E402

from rlaif.judge import Judge, JudgeConfig  # noqa: E402
from rlaif.records import read_jsonl  # noqa: E402
from rlaif.stages.rate import RateConfig, binarise, run_rate  # noqa: E402

ASPECTS = ["answers-the-question", "accuracy"]
# 2, 8, 20 and 40 words: digits 9, 8, 6, 3 under the "shorter" rule
REPLIES = ["sure thing.", "it is a small star, close by, that warms us.",
           " ".join(["word"] * 20), " ".join(["more"] * 40)]


def expected_rating(text: str, accuracy: float = 0.9) -> float:
    d = length_digit(text)
    return accuracy * d + (1 - accuracy) * (45 - d) / 8  # the other eight digits share 1 − accuracy


def judge(rule="shorter"):
    return Judge(RuleJudge(rule, accuracy=0.9), "helpful_honest", JudgeConfig(debias=True))


def write(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture()
def grouped(tmp_path):
    rows = [{"prompt": f"question {i}?", "completions": [REPLIES[(i + k) % 4] for k in range(4)]} for i in range(6)]
    rows.append({"prompt": "all alike?", "completions": ["one two.", "three four."]})  # equal ratings: a tie
    return write(tmp_path / "completions.jsonl", rows)


def test_ratings_are_the_probability_weighted_scores_per_aspect(grouped, tmp_path):
    s = run_rate(grouped, judge(), tmp_path / "out", RateConfig(aspects=ASPECTS), progress=False)
    ratings = read_jsonl(tmp_path / "out" / "ratings.jsonl")
    assert s["prompts"] == 7 and s["completions"] == 26 and s["aspects"] == ASPECTS and s["failed"] == 0
    for rec in ratings:
        for c in rec["completions"]:
            assert set(c["ratings"]) == set(ASPECTS) and len(c["distributions"][ASPECTS[0]]) == 10
            for a in ASPECTS:
                assert c["ratings"][a] == pytest.approx(expected_rating(c["response"]), abs=1e-3)
            assert c["mean_rating"] == pytest.approx(sum(c["ratings"].values()) / 2)


def test_binarised_pairs_take_the_best_and_a_seeded_other(grouped, tmp_path):
    s = run_rate(grouped, judge(), tmp_path / "a", RateConfig(aspects=ASPECTS, seed=0), progress=False)
    prefs = read_jsonl(tmp_path / "a" / "preferences.jsonl")
    assert s["preferences"] == 6 and s["ties"] == 1 and len(prefs) == 6  # the all-alike prompt is left out
    for p in prefs:
        assert p["chosen"][0]["content"] == REPLIES[0]  # the shortest is best on both aspects
        assert p["rejected"][0]["content"] != REPLIES[0]
        hi, lo = expected_rating(REPLIES[0]), expected_rating(p["rejected"][0]["content"])
        assert p["score_chosen"] == pytest.approx(hi, abs=1e-3) and p["score_rejected"] == pytest.approx(lo, abs=1e-3)
        assert p["margin"] == pytest.approx((hi - lo) / 9, abs=1e-3)
        assert p["p_chosen"] == pytest.approx(0.5 * (1 + p["margin"]))
    # the draw is the seed's: the same seed draws the same, other seeds draw others somewhere
    again = run_rate(grouped, judge(), tmp_path / "b", RateConfig(aspects=ASPECTS, seed=0), progress=False)
    assert again["preferences"] == 6
    assert read_jsonl(tmp_path / "b" / "preferences.jsonl") == prefs
    ratings = read_jsonl(tmp_path / "a" / "ratings.jsonl")
    draws = {seed: [binarise(r, seed) and binarise(r, seed)["rejected"][0]["content"] for r in ratings]
             for seed in range(4)}
    assert len({tuple(d) for d in draws.values()}) > 1
    # every other completion is drawn somewhere
    assert {d for ds in draws.values() for d in ds if d} == set(REPLIES[1:])


def test_rankings_by_ratings_and_by_pairwise_labels_put_the_shortest_first(grouped, tmp_path):
    run_rate(grouped, judge(), tmp_path / "r", RateConfig(aspects=ASPECTS), progress=False)
    by_rating = read_jsonl(tmp_path / "r" / "rankings.jsonl")
    assert len(by_rating) == 6 and all(r["ranked"] == REPLIES for r in by_rating)
    assert all(r["scores"] == sorted(r["scores"], reverse=True) for r in by_rating)
    s = run_rate(grouped, judge(), tmp_path / "p", RateConfig(aspects=ASPECTS, rank_by="pairwise"), progress=False)
    by_pairs = read_jsonl(tmp_path / "p" / "rankings.jsonl")
    # the two-word pair ties on ratings (one digit) but not pairwise (the rule then counts characters)
    assert s["ranked_by"] == "pairwise" and s["rankings"] == 7
    assert by_pairs[-1]["ranked"] == ["one two.", "three four."]
    by_pairs = by_pairs[:-1]
    assert all(r["ranked"] == REPLIES for r in by_pairs)
    assert by_pairs[0]["scores"][0] == pytest.approx(0.9)  # the shortest beats each other with p = 0.9
    from rlaif.train.reward_model import read_rankings

    assert len(read_rankings(tmp_path / "p" / "rankings.jsonl")[0]) == 7  # train-rm reads them


def test_the_control_judge_gives_no_length_order(grouped, tmp_path):
    run_rate(grouped, judge("random"), tmp_path / "c", RateConfig(aspects=ASPECTS), progress=False)
    prefs = read_jsonl(tmp_path / "c" / "preferences.jsonl")
    assert {p["chosen"][0]["content"] for p in prefs} != {REPLIES[0]}


def test_rating_resumes_and_reads_one_reply_per_record(tmp_path):
    rows = [{"prompt_id": f"p{i // 3}", "prompt": [{"role": "user", "content": f"q{i // 3}"}],
             "response": REPLIES[i % 3]} for i in range(9)]
    rows.append({"prompt_id": "lonely", "prompt": "one reply only", "response": "a"})
    path = write(tmp_path / "responses.jsonl", rows)
    first = run_rate(path, judge(), tmp_path / "o", RateConfig(aspects=ASPECTS[:1]), progress=False)
    assert first["prompts"] == 3 and first["too_few_completions"] == 1 and first["written"] == 3
    second = run_rate(path, judge(), tmp_path / "o", RateConfig(aspects=ASPECTS[:1]), progress=False)
    assert second["written"] == 0 and second["done_before"] == 3


@pytest.mark.parametrize("record,message", [
    ({"completions": ["a", "b"]}, r"c\.jsonl:1: missing field 'prompt'"),
    ({"prompt": "x", "completions": "a"}, r"c\.jsonl:1: field 'completions': expected a list"),
    ({"prompt": "x", "completions": ["a", {"text": "b"}]}, r"c\.jsonl:1: field 'completions\[1\]'"),
])
def test_bad_completions_file_is_one_line_and_exit_2(tmp_path, capsys, record, message):
    import re

    from rlaif.cli import main

    path = write(tmp_path / "c.jsonl", [record])
    assert main(["rate", "--completions", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1


def test_unknown_aspect_is_named(grouped, tmp_path):
    from rlaif.errors import UserError

    with pytest.raises(UserError, match="aspects: principle 'kindness'"):
        run_rate(grouped, judge(), tmp_path / "o", RateConfig(aspects=["kindness"]), progress=False)
