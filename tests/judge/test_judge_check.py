"""The judge check: the rule judge used to test it (tests/support/rule_judge.py), the constitutions' check
pairs, and `rlaif.eval.judge_check` over rule judges of known accuracy and the embedded model."""

from __future__ import annotations

import json
import math
import random

import pytest

from rlaif.backends.base import GenerationRequest, OptionRequest
from rlaif.constitution import Constitution, load_constitution
from rlaif.errors import UserError
from rlaif.eval.judge_check import RESULT, require_accuracy, run_judge_check
from rlaif.judge import Judge, JudgeConfig, check_pairs, judge_at_chance, judge_check_line
from rlaif.judge import prompts as J
from rlaif.judge import soft_labels as S
from rlaif.records import read_jsonl
from rlaif.templates import load_template
from rlaif.stages import labeler as L

from testkit import run_cli
from rule_judge import RuleJudge, length_digit

SHIPPED = ["harmless", "helpful_honest", "concise"]

CONVERSATION = [{"role": "user", "content": "How do I boil an egg?"}]
SHORT = "Simmer it for nine minutes."
LONG = "Put the egg in a pan of cold water, bring it to the boil, then simmer it for about nine minutes."

TEST_CONSTITUTION = {
    "name": "test", "version": "1", "description": "one principle for tests",
    "principles": [{"id": "brief", "critique_request": "Is it long?", "revision_request": "Make it brief.",
                    "comparison_question": "Which reply is briefer?"}],
    "few_shot": [{"prompt": "Say hi", "response": "Hello there, it is very nice indeed to meet you today.",
                  "critique": "Long.", "revision": "Hi!", "principle": "brief"}],
}


def _pairwise_request(a: str, b: str, template: str = "label_pairwise", **extra) -> OptionRequest:
    t = load_template(template)
    values = {"examples": "", "conversation": J.conversation_text(CONVERSATION, 3000), "response_a": a,
              "response_b": b, "question": "Which reply is better?", **extra}
    return OptionRequest(t.render(**values), t.render_prefill(**values))


def _p_first(engine, request) -> float:
    return S.soft_label(engine.option_logprobs([request], ["A", "B"])[0])


# ------------------------------------------------------------------ the rule judge itself


@pytest.mark.parametrize("template", ["label_pairwise", "label_cot"])
def test_rule_judge_shorter_wins_with_p_accuracy_on_rendered_templates(template):
    judge = RuleJudge("shorter", accuracy=0.8)
    extra = {"rationale": "Thinking."} if template == "label_cot" else {}
    assert _p_first(judge, _pairwise_request(SHORT, LONG, template, **extra)) == pytest.approx(0.8)
    assert _p_first(judge, _pairwise_request(LONG, SHORT, template, **extra)) == pytest.approx(0.2)
    assert _p_first(judge, _pairwise_request(SHORT, SHORT, template, **extra)) == pytest.approx(0.5)
    # equal words, fewer characters wins
    assert _p_first(judge, _pairwise_request("Simmer it nine minutes.", "Simmer it eight minutes.",
                                             template, **extra)) == pytest.approx(0.8)
    assert judge.counters["option_requests"] == 4


def test_rule_judge_reads_the_judged_pair_not_the_few_shot_examples():
    constitution = Constitution.model_validate(TEST_CONSTITUTION)
    pr = constitution.principles[0]
    examples = J.format_examples(constitution, pr, 1)
    assert "<reply_a>" in examples  # the example carries fences of its own
    judge = RuleJudge("shorter", accuracy=0.9)
    assert _p_first(judge, _pairwise_request(LONG, SHORT, examples=examples)) == pytest.approx(0.1)


def test_rule_judge_through_the_labeler_debiased_with_cot():
    """Both orders, the CoT rationale step and the prefill: p(shorter) = accuracy end to end."""
    constitution = Constitution.model_validate(TEST_CONSTITUTION)
    judge = RuleJudge("shorter", accuracy=0.7)
    pairs = [{"prompt": CONVERSATION, "a": LONG, "b": SHORT, "given": "unordered", "source_line": 1,
              "source_id": None}]
    for cfg in (JudgeConfig(), JudgeConfig(cot=True, clamp=(0.0, 1.0), few_shot=1)):
        j = Judge(judge, constitution, cfg)
        rec = L.make_process(j)(L.label_inputs(pairs, j))[0]
        assert rec["p_a"] == pytest.approx(0.3)
        assert rec["labels_by_order"] == {"ab": pytest.approx(0.3), "ba": pytest.approx(0.3)}
        assert rec["chosen"][0]["content"] == SHORT
    assert rec["rationale"] == "Reply (B) is better because it is shorter."  # order "ab": the long reply first
    assert judge.counters["generate_requests"] == 2


def test_rule_judge_direct_scores_fall_with_length():
    judge = RuleJudge("shorter", accuracy=0.9)
    constitution = Constitution.model_validate(TEST_CONSTITUTION)
    texts = ["Yes.", " ".join(["word"] * 20), " ".join(["word"] * 60)]
    assert [length_digit(t) for t in texts] == [9, 6, 1]
    scores = [s.value for s in Judge(judge, constitution).score_many([CONVERSATION] * 3, texts)]
    assert scores[0] > scores[1] > scores[2]
    # the favoured digit carries p = accuracy: E[score] for digit 9 with 0.1 spread over 1..8 (and
    # "10" at 1e-6 of the "1" mass)
    p_rest = 0.1 / 8
    e = 0.9 * 9 + p_rest * sum(range(1, 9)) + p_rest * 1e-6 * 9
    assert scores[0] == pytest.approx((e - 1) / 9, abs=1e-9)
    # asked for "10" as a first-token option as well (as a server is), the digits still carry the rule
    lp = judge.option_logprobs(J.direct_score_requests(load_template("label_direct"), ["User: hi"], ["Yes."],
                                                       ["Which is better?"]), [*map(str, range(1, 10)), "10"])[0]
    assert lp["9"] == pytest.approx(math.log(0.9)) and lp["10"] == pytest.approx(math.log(1e-6))


def test_rule_judge_random_is_confident_but_right_half_the_time():
    judge = RuleJudge("random", accuracy=0.9, seed=3)
    rng = random.Random(0)
    right, confident = 0, 0
    n = 400
    for i in range(n):
        short = f"Answer {i}."
        long = f"Here is a much longer answer number {i}, padded with words {rng.random():.6f}."
        p = _p_first(judge, _pairwise_request(short, long))
        right += p > 0.5
        confident += p == pytest.approx(0.9) or p == pytest.approx(0.1)
    assert confident == n
    assert 0.43 < right / n < 0.57  # ±3.5 standard errors around 0.5


def test_rule_judge_other_options_are_even_and_missing_fences_are_errors():
    judge = RuleJudge("shorter")
    req = OptionRequest([{"role": "user", "content": "Pick one."}])
    assert judge.option_logprobs([req], ["X", "Y", "Z"])[0] == {o: pytest.approx(-math.log(3)) for o in "XYZ"}
    with pytest.raises(ValueError, match="reply_a"):
        judge.option_logprobs([req], ["A", "B"])
    with pytest.raises(ValueError, match="<reply>"):
        judge.option_logprobs([req], [str(d) for d in range(1, 10)])
    with pytest.raises(ValueError, match="rule"):
        RuleJudge("longest")


def test_rule_judge_generate_names_the_preferred_reply_n_times():
    judge = RuleJudge("shorter")
    req = GenerationRequest(_pairwise_request(LONG, SHORT, "label_cot", rationale="").messages, n=3)
    other = GenerationRequest([{"role": "user", "content": "Hello"}], n=2)
    out = judge.generate([req, other])
    assert out[0].texts == ["Reply (B) is better because it is shorter."] * 3
    assert len(out[1].texts) == 2 and out[1].texts[0] == out[1].texts[1]
    assert judge.counters["generate_requests"] == 2


# ------------------------------------------------------------------ the labeler honours a pair's principle


def test_label_inputs_use_the_principle_a_pair_names():
    data = {**TEST_CONSTITUTION, "principles": TEST_CONSTITUTION["principles"] + [
        {"id": "kind", "critique_request": "Is it unkind?", "revision_request": "Make it kind.",
         "comparison_question": "Which reply is kinder?"}]}
    constitution = Constitution.model_validate(data)
    base = {"prompt": CONVERSATION, "a": SHORT, "b": LONG, "given": "check_pair", "source_line": 1, "source_id": None}
    j = Judge(RuleJudge("shorter", accuracy=0.9), constitution, JudgeConfig(principles=2))
    drawn = L.label_inputs([base], j)[0]
    kind = L.label_inputs([{**base, "principle": "kind"}], j)[0]
    brief = L.label_inputs([{**base, "principle": "brief"}], j)[0]
    assert sorted(drawn["principles"]) == ["brief", "kind"]  # the seeded draw, unchanged
    assert kind["principles"] == ["kind"] and brief["principles"] == ["brief"]
    assert len({drawn["id"], kind["id"], brief["id"]}) == 3  # the principle is part of the record's identity
    with pytest.raises(UserError, match="'rude' is not the id of a principle"):
        L.label_inputs([{**base, "principle": "rude"}], j)


# ------------------------------------------------------------------ the shipped check pairs


def _words(text: str) -> int:
    return len(text.split())


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_constitution_has_enough_check_pairs(name):
    c = load_constitution(name)
    assert len(c.check_pairs) >= 24
    assert len({cp.prompt for cp in c.check_pairs}) == len(c.check_pairs)  # no prompt twice
    assert all(cp.principle for cp in c.check_pairs)  # each judged by the principle it was written for


@pytest.mark.parametrize("name", ["harmless", "helpful_honest"])
def test_check_pairs_put_the_better_reply_longer_about_half_the_time(name):
    """A judge that only follows length must not pass: the better reply is the longer one in
    40–60 % of the pairs, counted in words and in characters alike."""
    pairs = load_constitution(name).check_pairs
    by_words = sum(_words(cp.better) > _words(cp.worse) for cp in pairs) / len(pairs)
    by_chars = sum(len(cp.better) > len(cp.worse) for cp in pairs) / len(pairs)
    assert 0.4 <= by_words <= 0.6 and 0.4 <= by_chars <= 0.6, (by_words, by_chars)
    assert all(_words(cp.better) != _words(cp.worse) for cp in pairs)


def test_concise_check_pairs_prefer_the_shorter_reply():
    assert all(_words(cp.better) < _words(cp.worse) for cp in load_constitution("concise").check_pairs)


def test_constitution_check_counts_check_pairs():
    res = run_cli("constitution", "check", "harmless", "concise")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("check pairs: 30") == 2


def _constitution_file(tmp_path, check_pairs) -> str:
    import yaml

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**TEST_CONSTITUTION, "check_pairs": check_pairs}))
    return str(path)


@pytest.mark.parametrize("pair, field, what", [
    ({"prompt": "Hi", "better": "Hello."}, "check_pairs.0.worse", "missing required field"),
    ({"better": "Hello.", "worse": "Go away."}, "check_pairs.0.prompt", "missing required field"),
    ({"prompt": "Hi", "better": "Hello.", "worse": "Go away.", "principle": "rude"}, "check_pairs.0.principle",
     "'rude' is not the id of a principle"),
    ({"prompt": "Hi", "better": "Hello.", "worse": "Hello."}, "check_pairs.0", "better and worse are the same"),
    ({"prompt": "Hi", "better": "Hello.", "worse": "Go.", "why": "x"}, "check_pairs.0.why", "unknown key"),
])
def test_bad_check_pair_is_one_line_and_exit_2(tmp_path, pair, field, what):
    path = _constitution_file(tmp_path, [pair])
    res = run_cli("constitution", "check", path)
    assert res.returncode == 2, res.stdout + res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and path in lines[0] and field in lines[0] and what in lines[0], res.stderr


# ------------------------------------------------------------------ the judge check


def test_check_pairs_become_labeler_pairs_with_the_better_reply_known():
    c = load_constitution("harmless")
    plain = check_pairs(c)
    assert [p["a"] for p in plain] == [cp.better for cp in c.check_pairs]
    assert all(p["human_chosen"] == "a" and p["prompt"] == [{"role": "user", "content": cp.prompt}]
               and p["principle"] == cp.principle for p, cp in zip(plain, c.check_pairs))
    blind = check_pairs(c, blind_seed=0)
    sides = [p["human_chosen"] for p in blind]
    assert 0.25 < sides.count("b") / len(sides) < 0.75
    assert all(p[p["human_chosen"]] == cp.better for p, cp in zip(blind, c.check_pairs))


def test_a_judge_that_follows_the_rule_passes_and_resumes_without_asking_again(tmp_path):
    judge = RuleJudge("shorter", accuracy=0.99)
    result = run_judge_check(Judge(judge, load_constitution("concise")), tmp_path / "jc", progress=False)
    assert result["status"] == "ok" and not judge_at_chance(result)
    assert result["pairs"] == 30 and result["accuracy"] >= 0.95
    assert result["mean_p_right"] == pytest.approx(0.99)
    assert result["position_flip_rate"] == 0.0 and result["prefers_longer_rate"] == 0.0
    assert result["judge"] == {"engine": "rule", "model": "rule:shorter"}
    assert result["constitution"]["name"] == "concise" and result["seconds_per_pair"] > 0
    assert judge_check_line(result) == result["message"] and "passes" in result["message"]
    assert "nearly flat" not in result["message"]
    # right on every pair, but barely: the line says the labels are nearly flat
    weak = run_judge_check(Judge(RuleJudge("shorter", accuracy=0.52), load_constitution("concise")), tmp_path / "weak",
                           progress=False)
    assert weak["status"] == "ok" and weak["accuracy"] == 1.0 and "labels are nearly flat" in weak["message"]
    labels = read_jsonl(tmp_path / "jc" / "labels.jsonl")
    assert len(labels) == 30 and all(r["principles"] == [cp.principle] for r, cp in
                                     zip(sorted(labels, key=lambda r: r["source_line"]),
                                         load_constitution("concise").check_pairs))
    assert judge.counters["option_requests"] == 60  # both orders, one principle each
    saved = json.loads((tmp_path / "jc" / RESULT).read_text())
    assert saved == json.loads(json.dumps(result))

    again = RuleJudge("shorter", accuracy=0.99)
    resumed = run_judge_check(Judge(again, load_constitution("concise")), tmp_path / "jc", progress=False)
    assert again.counters["option_requests"] == 0
    assert resumed == result


def test_judge_check_in_memory_gives_what_the_command_writes(tmp_path):
    """`Judge.check()` (no files) and `rlaif judge-check`'s run (labels through the label stage,
    resumable) measure the same judgement: every figure agrees."""
    concise = load_constitution("concise")
    mem = Judge(RuleJudge("shorter", accuracy=0.8), concise).check()
    disk = run_judge_check(Judge(RuleJudge("shorter", accuracy=0.8), concise), tmp_path / "jc", progress=False)
    assert mem["status"] == disk["status"] == "ok" and mem["message"] == disk["message"]
    for key in ("pairs", "accuracy", "mean_p_right", "position_flip_rate", "prefers_longer_rate",
                "better_is_longer_rate"):
        assert mem[key] == pytest.approx(disk[key]), key
    assert mem["accuracy_ci95"] == pytest.approx(disk["accuracy_ci95"])
    assert mem["mean_p_right"] == pytest.approx(0.8)
    coin = Judge(RuleJudge("random", accuracy=0.9), concise).check()
    assert coin["status"] == "at_chance" and judge_at_chance(coin)


@pytest.mark.parametrize("rule, name", [("random", "concise"), ("shorter", "harmless"),
                                        ("shorter", "helpful_honest")])
def test_a_coin_or_a_length_bias_is_at_chance(tmp_path, rule, name):
    """The random control is at chance anywhere; a judge that only likes short replies is at
    chance on the constitutions whose better replies are long half the time."""
    result = run_judge_check(Judge(RuleJudge(rule, accuracy=0.9), load_constitution(name)), tmp_path / "jc", progress=False)
    lo, hi = result["accuracy_ci95"]
    assert result["status"] == "at_chance" and judge_at_chance(result) and lo <= 0.5 <= hi
    line = judge_check_line(result)
    assert f"rule:{rule} is at chance on {name}'s 30 check pairs" in line and "carry no signal" in line
    if rule == "shorter":
        assert result["accuracy"] == 0.5 and result["prefers_longer_rate"] == 0.0


def test_position_bias_cannot_pass_when_debiasing_is_off(tmp_path):
    """Without debiasing only one order is shown; the better reply sits on a seeded side, so a judge
    that always picks the first-shown reply is at chance rather than perfect."""
    cfg = JudgeConfig(debias=False)
    result = run_judge_check(Judge(RuleJudge("first", accuracy=0.9), load_constitution("harmless"), cfg),
                             tmp_path / "jc", progress=False)
    assert result["status"] == "at_chance" and result["position_flip_rate"] is None
    debiased = run_judge_check(Judge(RuleJudge("first", accuracy=0.9), load_constitution("harmless")), tmp_path / "jc2",
                               progress=False)
    assert debiased["status"] == "at_chance" and debiased["position_flip_rate"] == 1.0
    assert debiased["mean_p_right"] == pytest.approx(0.5)


def test_a_judge_that_prefers_the_worse_reply_is_below_chance(tmp_path):
    result = run_judge_check(Judge(RuleJudge("shorter", accuracy=0.9), _reversed_concise()), tmp_path / "jc", progress=False)
    assert result["status"] == "below_chance" and not judge_at_chance(result) and result["accuracy"] == 0.0
    assert "prefers the worse reply" in judge_check_line(result)


def _reversed_concise() -> Constitution:
    c = load_constitution("concise")
    flipped = [cp.model_copy(update={"better": cp.worse, "worse": cp.better}) for cp in c.check_pairs]
    return c.model_copy(update={"check_pairs": flipped})


def test_a_constitution_without_check_pairs_is_skipped(tmp_path):
    judge = RuleJudge("shorter")
    result = run_judge_check(Judge(judge, Constitution.model_validate(TEST_CONSTITUTION)), tmp_path / "jc", progress=False)
    assert result["status"] == "skipped" and result["pairs"] == 0 and not judge_at_chance(result)
    assert "carries no check pairs" in judge_check_line(result)
    assert judge.counters["option_requests"] == 0 and not (tmp_path / "jc").exists()
    with pytest.raises(UserError, match="has no check pairs"):
        require_accuracy(result, 0.8)


@pytest.mark.parametrize("threshold", [0.5, 0.2, 1.01, -1, "0.8", True, None])
def test_require_accuracy_refuses_a_threshold_outside_half_to_one(threshold):
    result = {"status": "ok", "accuracy": 0.9, "pairs": 30, "judge": {"model": "m"}, "constitution": {"name": "c"}}
    with pytest.raises(UserError, match=r"expected a number in \(0.5, 1\]"):
        require_accuracy(result, threshold)


def test_require_accuracy_stops_a_weak_judge():
    result = {"status": "ok", "accuracy": 0.8, "pairs": 30, "judge": {"model": "m"}, "constitution": {"name": "c"}}
    require_accuracy(result, 0.8)
    require_accuracy(result, 0.75)
    with pytest.raises(UserError) as e:
        require_accuracy(result, 0.9)
    assert "m scored 0.80 on c's 30 check pairs, below the required 0.9" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.heavy
@pytest.mark.slow
def test_the_embedded_model_is_at_chance_on_harmless(embedded_engine, tmp_path, capsys):
    result = run_judge_check(Judge(embedded_engine, load_constitution("harmless")), tmp_path / "jc", progress=False)
    print(json.dumps({k: result[k] for k in ("accuracy", "accuracy_ci95", "mean_p_right", "position_flip_rate",
                                             "prefers_longer_rate", "seconds_per_pair")}))
    assert result["pairs"] == 30
    assert result["status"] == "at_chance" and judge_at_chance(result)
    assert "embedded:smollm2-135m-instruct is at chance on harmless's 30 check pairs" in judge_check_line(result)
