"""`rlaif eval-labeler` on labels people gave with `rlaif annotate`: the judge (the rule judge,
which prefers the shorter reply) against three annotators whose votes are set by hand, so every
number in the report can be checked on paper."""

import json

import pytest

from rlaif.annotate.human_eval import run_human_eval
from rlaif.annotate.pairs import annotation_pairs
from rlaif.annotate.store import Store
from rlaif.cli import main
from rlaif.constitution import load_constitution
from rlaif.judge import Judge
from rule_judge import RuleJudge

# 1 = the annotator leaned to reply a (the shorter one, which the judge prefers on every pair)
VOTES = [{"x": 1, "y": 1, "z": 1}, {"x": 1, "y": 1, "z": 0}, {"x": 1, "y": 0, "z": 0},
         {"x": 0, "y": 0, "z": 0}, {"x": 1, "y": 1}, {"x": 1}]


@pytest.fixture
def db(tmp_path):
    constitution = load_constitution("harmless")
    raw = [{"prompt": f"Question {i}?", "response_a": f"Short answer {i}.",
            "response_b": f"A much longer answer to question {i}, with many more words than the first one."}
           for i in range(len(VOTES))]
    pairs = annotation_pairs(raw, "hand", constitution)
    store = Store(tmp_path / "labels.sqlite", create=True)
    store.add_pairs(pairs)
    for p, votes in zip(pairs, VOTES):
        for who, v in votes.items():
            store.record(who, p["pair_id"], point=2 if v else 7, shown=False)  # in the pair's terms
    store.record("x", pairs[0]["pair_id"], point=2, shown=False)  # a re-label replaces, never doubles
    return store.path


def check(m):
    ann = m["annotators"]
    assert (ann["x"]["agreement"], ann["y"]["agreement"], ann["z"]["agreement"]) == pytest.approx((5 / 6, 3 / 5, 1 / 4))
    assert m["majority"]["n"] == 6 and m["majority"]["accuracy"] == pytest.approx(4 / 6)
    loo = m["leave_one_out"]
    assert loo["n"] == 10 and loo["human"] == pytest.approx(0.8) and loo["judge"] == pytest.approx(0.6)
    h = m["humans"]
    assert h["pairwise_agreement"] == pytest.approx(9 / 13) and h["fleiss_kappa"] == pytest.approx(41 / 90)
    for ci, v in ((loo["human_ci95"], loo["human"]), (ann["x"]["agreement_ci95"], ann["x"]["agreement"])):
        assert ci[0] <= v <= ci[1]


def test_judge_against_annotators_and_the_human_ceiling(db, tmp_path):
    constitution = load_constitution("harmless")
    m = run_human_eval(db, Judge(RuleJudge("shorter", accuracy=0.9), constitution), tmp_path / "ev", progress=False)
    check(m)
    assert m["principle_not_in_constitution"] == 0 and m["labels"] == 15
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "| leave-one-out agreement with the majority of the others (n=10) | 0.600 [" in report
    assert "| 0.800 [" in report and "| x | 6 | 0.833 [" in report and "**majority**" in report
    assert (tmp_path / "ev" / "calibration.png").stat().st_size > 0
    # the judge saw the pairs blind: a on both sides of its prompts
    recs = [json.loads(x) for x in (tmp_path / "ev" / "labels.jsonl").read_text().splitlines()]
    assert {r["chosen_is"] for r in recs} == {"a", "b"}
    # the exported JSONL gives the same numbers as the database
    assert main(["annotate", "export", "--db", str(db), "--out", str(tmp_path / "h.jsonl")]) == 0
    check(run_human_eval(tmp_path / "h.jsonl", Judge(RuleJudge("shorter", accuracy=0.9), constitution),
                         tmp_path / "ev2", progress=False))


@pytest.mark.slow
def test_cli_eval_labeler_reads_the_database(db, tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "cli"
    assert main(["eval-labeler", "--human", str(db), "--out", str(out), "--model", str(tiny_model_dir),
                 "--limit", "3"]) == 0
    printed = capsys.readouterr().out
    assert "eval-labeler (human annotations): 3 pairs" in printed and "leave-one-out: judge" in printed
    m = json.loads((out / "metrics.json").read_text())
    assert m["pairs"] == 3 and set(m["annotators"]) == {"x", "y", "z"} and m["labeler"]["model"]
    assert "The judge next to the human ceiling" in (out / "report.md").read_text()
