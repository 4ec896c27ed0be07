"""The judge check: the rule judge used to test it (tests/rule_judge.py), the constitutions' check
pairs, and `rlaif.eval.judge_check` over rule judges of known accuracy and the embedded model."""

from __future__ import annotations

import math
import random

import pytest

from rlaif.backends.base import GenerationRequest, OptionRequest
from rlaif.constitution import Constitution, load_constitution
from rlaif.stages import labeler as L

from rule_judge import RuleJudge, length_digit

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
    t = L.load_template(template)
    values = {"examples": "", "conversation": L.conversation_text(CONVERSATION, 3000), "response_a": a,
              "response_b": b, "question": "Which reply is better?", **extra}
    return OptionRequest(t.render(**values), t.render_prefill(**values))


def _p_first(engine, request) -> float:
    return L.soft_label(engine.option_logprobs([request], ["A", "B"])[0])


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
    examples = L.format_examples(constitution, pr, 1)
    assert "<reply_a>" in examples  # the example carries fences of its own
    judge = RuleJudge("shorter", accuracy=0.9)
    assert _p_first(judge, _pairwise_request(LONG, SHORT, examples=examples)) == pytest.approx(0.1)


def test_rule_judge_through_the_labeler_debiased_with_cot():
    """Both orders, the CoT rationale step and the prefill: p(shorter) = accuracy end to end."""
    constitution = Constitution.model_validate(TEST_CONSTITUTION)
    judge = RuleJudge("shorter", accuracy=0.7)
    pairs = [{"prompt": CONVERSATION, "a": LONG, "b": SHORT, "given": "unordered", "source_line": 1,
              "source_id": None}]
    for cfg in (L.LabelerConfig(), L.LabelerConfig(cot=True, clamp=(0.0, 1.0), few_shot=1)):
        proc = L.make_process(judge, constitution, cfg, L.templates_for(cfg))
        rec = proc(L.label_inputs(pairs, constitution, cfg, {}))[0]
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
    scores = L.direct_scores(judge, [CONVERSATION] * 3, texts, constitution=constitution)
    assert scores[0] > scores[1] > scores[2]
    # the favoured digit carries p = accuracy: E[score] for digit 9 with 0.1 spread over 1..8 (and
    # "10" at 1e-6 of the "1" mass)
    p_rest = 0.1 / 8
    e = 0.9 * 9 + p_rest * sum(range(1, 9)) + p_rest * 1e-6 * 9
    assert scores[0] == pytest.approx((e - 1) / 9, abs=1e-9)


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
