import math

import pytest
import torch

from rlaif.backends import GenerationRequest, OptionRequest
from rlaif.backends.transformers_engine import TransformersEngine
from rlaif.config import EngineConfig
from rlaif.errors import UserError
from testkit import build_tiny_llama
from greedy_reference import assert_agrees_up_to_a_near_tie, greedy_reference

PROMPTS = ["Hi", "Tell me about the history of the printing press in Europe, briefly.",
           "Why is the sky blue?", "List three fruits.", "Say something kind to a friend who failed an exam."]


@pytest.fixture(scope="module")
def tiny_engine(tokenizer):
    return TransformersEngine.from_pretrained_objects(build_tiny_llama(tokenizer), tokenizer,
                                                      EngineConfig(model="tiny", device="cpu", batch_size=3))


def user(text):
    return [{"role": "user", "content": text}]


def same_model(engine, **cfg):
    """Another engine over the same tiny model and tokenizer, with these config fields."""
    return TransformersEngine.from_pretrained_objects(engine.net, engine.tokenizer,
                                                      EngineConfig(model="tiny", device="cpu", **cfg))


def test_batched_greedy_equals_one_by_one(tiny_engine):
    reqs = [GenerationRequest(user(p), max_tokens=12) for p in PROMPTS]
    batched = tiny_engine.generate(reqs)
    single = [tiny_engine.generate([r])[0] for r in reqs]
    # both against plain unpadded forwards, up to the first near-tie (random weights make them
    # likely, and which side rounding picks there depends on the CPU)
    for r, b, s in zip(reqs, batched, single):
        path = greedy_reference(tiny_engine.net, tiny_engine.tokenizer, tiny_engine._prompt_ids(r.messages), 12)
        for text, what in ((b.texts[0], "batched"), (s.texts[0], "alone")):
            assert_agrees_up_to_a_near_tie(text, path, tiny_engine.tokenizer, tie=1e-3, min_decided=3, what=what)
    assert all(c.completion_tokens > 0 for c in batched)
    assert [c.prompt_tokens for c in batched] == [c.prompt_tokens for c in single]


def test_seeded_sampling_is_reproducible_and_seed_sensitive(tiny_engine):
    reqs = [GenerationRequest(user(p), max_tokens=10, temperature=1.0, seed=7, n=2) for p in PROMPTS]
    a, b = tiny_engine.generate(reqs), tiny_engine.generate(reqs)
    assert [c.texts for c in a] == [c.texts for c in b]
    assert all(len(c.texts) == 2 for c in a)
    other = tiny_engine.generate([GenerationRequest(r.messages, max_tokens=10, temperature=1.0, seed=8, n=2)
                                  for r in reqs])
    assert [c.texts for c in other] != [c.texts for c in a]


def test_option_logprobs_match_an_unpadded_forward(tiny_engine, tokenizer):
    reqs = [OptionRequest(user(p), prefill="The answer is (") for p in PROMPTS]
    got = tiny_engine.option_logprobs(reqs, ["A", "B"])
    for req, scores in zip(reqs, got):
        text = tokenizer.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text + req.prefill, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            logp = torch.log_softmax(tiny_engine.net(ids).logits[0, -1].float(), -1)
        for option in "AB":
            spellings = tiny_engine.option_token_ids(option)
            assert len(spellings) >= 1
            expected = torch.logsumexp(logp[spellings], 0).item()
            assert math.isfinite(scores[option])
            assert scores[option] == pytest.approx(expected, abs=1e-4)


def test_prefill_batches_respect_rows_and_token_budget(tiny_engine):
    lengths = [50, 400, 30, 380, 390, 1500, 60, 45, 20]
    eng = same_model(tiny_engine, batch_size=3, prefill_tokens=1000)
    batches = eng.prefill_batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths, reverse=True)  # longest first, every batch sorted
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * lengths[b[0]] <= 1000  # the longest row sets the padded width
    assert [lengths[i] for i in batches[0]] == [1500]  # over the budget: alone
    assert [lengths[i] for i in batches[1]] == [400, 390]  # a third row would pad to 1200
    # CPU default: 1024 tokens; no budget: rows only
    assert [len(b) for b in tiny_engine.prefill_batches([400] * 7)] == [2, 2, 2, 1]
    unbounded = same_model(tiny_engine, batch_size=3, prefill_tokens=10**9)
    assert [len(b) for b in unbounded.prefill_batches([400] * 7)] == [3, 3, 1]
    # rows continuing a cached prefix (prefix reuse) hold its columns too: 3 × (300 + 40) ≤ 1024 < 4 × 340
    wide = same_model(tiny_engine, batch_size=16)
    assert [len(b) for b in wide.prefill_batches([40] * 30)] == [16, 14]
    assert [len(b) for b in wide.prefill_batches([40] * 30, past=300)] == [3] * 10
    assert [len(b) for b in wide.prefill_batches([40] * 3, past=2000)] == [1] * 3  # over the budget: one row each


def test_option_logprobs_do_not_depend_on_the_batching(tiny_engine):
    reqs = [OptionRequest(user(p), prefill="The answer is (") for p in PROMPTS]
    one = same_model(tiny_engine, batch_size=8, prefill_tokens=1)
    wide = same_model(tiny_engine, batch_size=8, prefill_tokens=10**9)
    a, b = one.option_logprobs(reqs, ["A", "B"]), wide.option_logprobs(reqs, ["A", "B"])
    assert one.counters["forward_passes"] == len(reqs) and wide.counters["forward_passes"] == 1
    for x, y in zip(a, b):
        assert x["A"] == pytest.approx(y["A"], abs=1e-4) and x["B"] == pytest.approx(y["B"], abs=1e-4)


def test_option_spellings_are_single_tokens(tiny_engine, tokenizer):
    ids = tiny_engine.option_token_ids("A")
    assert {tokenizer.decode([i]).strip() for i in ids} == {"A"}
    assert len(ids) == 2  # "A" and " A" are both single tokens for this tokenizer


def test_stop_strings_cut_the_text(tiny_engine):
    outs = tiny_engine.generate([GenerationRequest(user(p), max_tokens=16) for p in PROMPTS])
    prompt, free = max(zip(PROMPTS, (c.texts[0] for c in outs)), key=lambda pt: len(pt[1]))
    assert len(free) > 6
    stop = free[3:6]
    cut = tiny_engine.generate([GenerationRequest(user(prompt), max_tokens=16, stop=[stop])])[0]
    assert stop not in cut.texts[0] and free.startswith(cut.texts[0].strip()[:2])
    assert cut.finish_reasons == ["stop"]


def test_prompt_over_context_length_is_a_clear_error(tiny_engine):
    with pytest.raises(UserError, match="exceeds the context length"):
        tiny_engine.generate([GenerationRequest(user("word " * 600), max_tokens=8)])


@pytest.mark.slow
def test_embedded_model_generates_and_scores(embedded_engine):
    prompts = ["What is the capital of France?", "Name a colour of the rainbow.", "Say hello in Spanish."]
    out = embedded_engine.generate([GenerationRequest(user(p), max_tokens=16) for p in prompts])
    assert len(out) == 3 and all(c.texts[0].strip() for c in out)
    assert "paris" in out[0].texts[0].lower()
    scores = embedded_engine.option_logprobs(
        [OptionRequest(user("Is Paris in France? Answer (A) yes or (B) no."), prefill="The answer is (")],
        ["A", "B"])[0]
    assert all(math.isfinite(v) and v < 0 for v in scores.values())
    assert scores["A"] != scores["B"]
