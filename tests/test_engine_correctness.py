"""Engine correctness (issue 13, engines): results must not depend on how requests are batched or on
which engine serves the model.

- position ids: a model with absolute position embeddings (GPT-2) scores a prompt the same alone
  and inside a left-padded batch;
- per-record failures: one request that fails for good costs its own record only (see also
  tests/test_openai_engine.py and tests/test_reliability_endpoints.py).
"""

from __future__ import annotations

import pytest
import torch

from rlaif.backends import GenerationRequest, OptionRequest
from rlaif.backends.transformers_engine import TransformersEngine
from rlaif.config import EngineConfig


def user(text):
    return [{"role": "user", "content": text}]


def build_tiny_gpt2(tokenizer, seed: int = 0):
    """A random-weight GPT-2 (learned absolute position embeddings) with the embedded tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="module")
def gpt2_engine(tokenizer):
    return TransformersEngine.from_pretrained_objects(
        build_tiny_gpt2(tokenizer), tokenizer,
        EngineConfig(model="tiny-gpt2", device="cpu", batch_size=8, prefill_tokens=10**6))


SHORT = "Is a tomato a fruit?"
LONG = ("Here is a much longer question, padded out with detail so that the short prompt next to it "
        "gets many pad tokens on its left: is a tomato, botanically speaking, a fruit or a vegetable?")


def test_option_scores_alone_equal_scores_in_a_left_padded_batch(gpt2_engine):
    options = ["A", "B"]
    alone = gpt2_engine.option_logprobs([OptionRequest(user(SHORT), prefill="The answer is (")], options)[0]
    passes = gpt2_engine.counters["forward_passes"]
    batched = gpt2_engine.option_logprobs([OptionRequest(user(LONG), prefill="The answer is ("),
                                          OptionRequest(user(SHORT), prefill="The answer is (")], options)[1]
    assert gpt2_engine.counters["forward_passes"] == passes + 1, "both prompts must share one padded forward"
    for o in options:
        assert batched[o] == pytest.approx(alone[o], abs=1e-4), (o, alone, batched)


def test_greedy_generation_alone_equals_generation_in_a_left_padded_batch(gpt2_engine):
    """`generate` derives position ids from the attention mask for models whose forward takes them
    (transformers' `_prepare_position_ids_for_generation`), GPT-2 included: checked, not assumed."""
    alone = gpt2_engine.generate([GenerationRequest(user(SHORT), max_tokens=8)])[0]
    batched = gpt2_engine.generate([GenerationRequest(user(LONG), max_tokens=8),
                                    GenerationRequest(user(SHORT), max_tokens=8)])[1]
    assert batched.texts == alone.texts and alone.completion_tokens > 0
