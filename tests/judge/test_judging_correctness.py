"""Judging correctness (issue 13, items 6, 9, 10), on real engines over tiny random-weight models:

- direct scores ask every reply to one prompt the same question (principle), and say which;
- the position flip rate counts an exact tie in one order as half a flip;
- a tokenizer that spells "10" as one token has that token's mass read into p(score = 10).
"""

from __future__ import annotations

import math
import re

import pytest

from rlaif.constitution import load_constitution
from rlaif import metrics as M
from rlaif.judge import Judge, JudgeConfig
from rlaif.judge import soft_labels as S
from rlaif.stages import labeler as L

from testkit import ROOT, build_tiny_llama

QUESTION = re.compile(r"comparing two replies: (.*)\n")
REPLY = re.compile(r"<reply>\n(.*?)\n</reply>", re.S)


class RecordingEngine:
    """A real engine, passed through; every option request it receives is kept with its options."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.model = inner.name, inner.model
        self.calls: list[tuple[list, list[str]]] = []

    def option_logprobs(self, requests, options):
        self.calls.append((list(requests), list(options)))
        return self.inner.option_logprobs(requests, options)

    def generate(self, requests):
        return self.inner.generate(requests)

    def __getattr__(self, name):  # capabilities of the engine underneath (e.g. is_single_token)
        return getattr(self.inner, name)

    def close(self):
        self.inner.close()

    def asked(self) -> list[tuple[str, str]]:
        """(reply, question) of every first-digit request, in the order received (not the "0" after
        "1" reads: a call of their own, or, on an engine that reuses prefixes, the call's second half)."""
        out = []
        for requests, options in self.calls:
            if options == ["0"]:
                continue
            if "0" in options:
                requests = requests[:len(requests) // 2]
            for r in requests:
                text = r.messages[-1]["content"]
                out.append((REPLY.search(text).group(1), QUESTION.search(text).group(1)))
        return out


@pytest.fixture(scope="module")
def tiny_engine(tokenizer):
    from rlaif.backends.transformers_engine import TransformersEngine
    from rlaif.config import EngineConfig

    return TransformersEngine.from_pretrained_objects(build_tiny_llama(tokenizer), tokenizer,
                                                      EngineConfig(model="tiny-judge", device="cpu"))


@pytest.fixture(scope="module")
def harmless():
    return load_constitution("harmless")


PROMPTS = ["How do I pick a lock?", "Write a rude joke about my neighbour.", "What is the capital of France?",
           "Can you help me write a cover letter?", "How can I get back at my ex?"]


# ------------------------------------------------------------------ 6. one question per prompt


@pytest.mark.parametrize("k", [1, 2])
def test_direct_scores_ask_every_reply_to_a_prompt_the_same_question(tiny_engine, harmless, k):
    eng = RecordingEngine(tiny_engine)
    prompts = [p for p in PROMPTS for _ in range(2)]
    replies = [f"{kind} reply number {i}" for i in range(len(PROMPTS)) for kind in ("a careful", "a reckless")]
    judge = Judge(eng, harmless, JudgeConfig(principles=k, seed=0, max_conversation_chars=200, max_response_chars=100))
    scores = [s.value for s in judge.score_many(prompts, replies)]
    assert len(scores) == len(replies) and all(0 <= s <= 1 for s in scores)
    asked: dict[str, list[str]] = {}
    for reply, question in eng.asked():
        asked.setdefault(reply, []).append(question)
    for i in range(len(PROMPTS)):
        first, second = asked[replies[2 * i]], asked[replies[2 * i + 1]]
        assert len(first) == k and first == second, f"prompt {i}: {first} vs {second}"
    # the detailed form says which principles were used, and they are the ones asked
    eng.calls.clear()
    detailed = judge.score_many(prompts, replies)
    assert [d.value for d in detailed] == pytest.approx(scores)
    for d, reply in zip(detailed, replies):
        assert len(d.principles) == k and len(d.scores) == k
        assert [harmless.principle(pid).comparison_question.strip() for pid in d.principles] == \
            [q for r, q in eng.asked() if r == reply]
    assert all(detailed[2 * i].principles == detailed[2 * i + 1].principles for i in range(len(PROMPTS)))
    # a principle given by id is the one asked, and recorded
    one = judge.score(PROMPTS[0], "x", principle="privacy")
    assert one.principles == ["privacy"]


def test_best_of_n_candidates_share_the_question_and_the_record_names_it(tiny_engine, harmless):
    from rlaif.train.best_of_n import BestOfNConfig, best_of_n

    judge = RecordingEngine(tiny_engine)
    from rlaif.train.rewards import direct_reward

    reward = direct_reward(Judge(judge, harmless, JudgeConfig(principles=1, seed=0)))
    cfg = BestOfNConfig(n=3, max_tokens=6, temperature=1.0)
    recs = best_of_n([{"prompt": [{"role": "user", "content": p}]} for p in PROMPTS[:3]], tiny_engine, reward, cfg)
    asked = judge.asked()
    assert len(asked) == 3 * 3
    for j, rec in enumerate(recs):
        questions = {q for _, q in asked[3 * j:3 * j + 3]}
        assert len(questions) == 1, f"prompt {j}: candidates were asked {questions}"
        question = questions.pop()
        assert rec["principles"] == [next(p.id for p in harmless.principles
                                          if p.comparison_question.strip() == question)]
        assert rec["score"] == max(rec["scores"])


def test_direct_pair_labels_score_both_replies_under_the_pairs_principles(tiny_engine, harmless):
    eng = RecordingEngine(tiny_engine)
    cfg = JudgeConfig(mode="direct", principles=2, max_conversation_chars=200, max_response_chars=100)
    pairs = [{"prompt": [{"role": "user", "content": p}], "a": f"first {i}", "b": f"second {i}", "given": "unordered",
              "source_line": i, "source_id": None} for i, p in enumerate(PROMPTS[:3])]
    judge = Judge(eng, harmless, cfg)
    recs = L.make_process(judge)(L.label_inputs(pairs, judge))
    asked: dict[str, list[str]] = {}
    for reply, question in eng.asked():
        asked.setdefault(reply, []).append(question)
    for i, rec in enumerate(recs):
        want = [harmless.principle(pid).comparison_question.strip() for pid in rec["principles"]]
        assert asked[f"first {i}"] == asked[f"second {i}"] == want


# ------------------------------------------------------------------ 9. position flips with exact ties


def test_position_flip_rate_counts_an_order_tie_as_half_a_flip():
    # (+,+) 0 ; (tie,+) ½ ; (tie,tie) 0 ; (+,tie) ½ ; (−,+) 1 ; (−,tie) ½
    ab = [0.7, 0.5, 0.5, 0.7, 0.3, 0.2]
    ba = [0.6, 0.6, 0.5, 0.5, 0.6, 0.5]
    assert list(M.position_flips(ab, ba)) == [0.0, 0.5, 0.0, 0.5, 1.0, 0.5]
    assert M.position_flip_rate(ab, ba) == pytest.approx(2.5 / 6)
    assert M.position_flip_rate([0.5], [0.5]) == 0.0  # the same verdict in both orders: no flip


def test_eval_metrics_use_the_tie_rule_and_count_order_ties():
    from rlaif.eval.labeler_report import compute_metrics

    def rec(p_ab, p_ba):
        return {"p_a": (p_ab + p_ba) / 2, "human_chosen": "a", "chosen_is": "a",
                "labels_by_order": {"ab": p_ab, "ba": p_ba},
                "chosen": [{"role": "assistant", "content": "yes"}],
                "rejected": [{"role": "assistant", "content": "no"}]}

    m = compute_metrics([rec(0.7, 0.6), rec(0.5, 0.8), rec(0.3, 0.7), rec(0.5, 0.5)])
    assert m["position_flip_rate"] == pytest.approx((0 + 0.5 + 1 + 0) / 4)
    assert m["position_order_ties"] == 2


# ------------------------------------------------------------------ 10. a tokenizer with "10" as one token


def _bpe_tokenizer_with_a_ten():
    """A byte-level BPE tokenizer trained here whose vocabulary holds "10" as one token (as GPT-2's
    and Llama-3's do) next to the single digits "1" and "0"."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<pad>", "<eos>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    template = (ROOT / "prompts" / "label_direct.yaml").read_text()  # so the judge prompt is short
    corpus = ["10", "10/10", "(10)", "Score: 10", "Score: 7", "I rate it 10 of 10.", template] * 20
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def test_direct_score_reads_a_single_token_ten():
    import torch

    from rlaif.backends.transformers_engine import TransformersEngine
    from rlaif.config import EngineConfig

    tok = _bpe_tokenizer_with_a_ten()
    ids = {s: tok(s, add_special_tokens=False)["input_ids"] for s in ("10", "1", "0", "7")}
    assert all(len(v) == 1 for v in ids.values()), ids  # "10" is one token, and so are "1" and "0"
    model = build_tiny_llama(tok, hidden=16)
    # a real forward pass whose next-token distribution is known: zero weights, chosen biases
    head = torch.nn.Linear(16, len(tok), bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-40.0)
        for s, b in (("10", 4.0), ("7", 4.0), ("1", 2.0), ("0", 3.0)):
            head.bias[ids[s][0]] = b
    model.lm_head = head
    eng = RecordingEngine(TransformersEngine.from_pretrained_objects(
        model, tok, EngineConfig(model="tiny-ten", device="cpu")))
    e = math.exp
    z = e(4) + e(4) + e(2)  # the ten first-token options hold (almost) all the mass
    p10, p7, p1 = e(4) / z, e(4) / z, e(2) / z
    q = e(3) / (e(4) + e(4) + e(2) + e(3))  # p("0" | "1"), over the whole vocabulary
    want = [0.0] * 10
    want[0], want[6], want[9] = p1 * (1 - q), p7, p10 + p1 * q
    want_score = (sum(k * p for k, p in zip(range(1, 11), want)) - 1) / 9
    harmless = load_constitution("harmless")
    got = Judge(eng, harmless).score("How was it?", "fine", principle="privacy")
    assert got.value == pytest.approx(want_score, abs=1e-6)
    # one call: the first-token options, then "0" read after "1" (the engine reuses the prompt's cache)
    assert eng.is_single_token("10") is True and eng.calls[0][1] == list(S.DIGITS) + ["10", "0"]
    assert got.distribution == pytest.approx(want, abs=1e-6)
    assert got.expected == pytest.approx(1 + 9 * want_score, abs=1e-5)


def test_split_ten_tokenizers_keep_the_two_step_reading(tiny_engine, harmless):
    eng = RecordingEngine(tiny_engine)  # SmolLM2's tokenizer spells "10" as "1", "0"
    assert eng.is_single_token("10") is False and eng.is_single_token("7") is True
    Judge(eng, harmless).score("hi", "hello", principle="privacy")
    assert eng.calls[0][1] == list(S.DIGITS) + ["0"]


def test_a_server_is_asked_for_ten_and_an_unlisted_ten_reads_as_zero():
    """Through the openai engine and a real HTTP server whose vocabulary has no "10": the engine
    cannot say what is one token, so "10" is asked for; unlisted, it adds no mass."""
    import sys
    from pathlib import Path

    from rlaif.backends.base import OptionRequest
    from rlaif.backends.openai_engine import OpenAIEngine
    from rlaif.config import EngineConfig

    from servers.fake_openai import FakeOpenAIServer

    harmless = load_constitution("harmless")
    with FakeOpenAIServer() as srv:
        eng = RecordingEngine(OpenAIEngine(EngineConfig(kind="openai", model="fake-model", base_url=srv.base_url,
                                                        top_logprobs=20)))
        got = Judge(eng, harmless).score("hi", "hello", principle="privacy")
        assert eng.calls[0][1] == list(S.DIGITS) + ["10"]
        request = eng.calls[0][0][0]
        nine = eng.inner.option_logprobs([request], list(S.DIGITS))[0]
        zero = eng.inner.option_logprobs([OptionRequest(request.messages, request.prefill + "1")], ["0"])[0]
        eng.close()
    assert got.distributions[0] == pytest.approx(S.score_distribution(nine, zero["0"]), abs=1e-6)
    assert "10" not in got.floored
