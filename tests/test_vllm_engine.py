"""The vllm engine on the embedded model. Needs vllm and a CUDA GPU; skipped with the reason elsewhere."""

from __future__ import annotations

import math

import pytest

from rlaif.backends.base import GenerationRequest, OptionRequest
from rlaif.backends.vllm_engine import VLLM_MISSING, VLLMEngine, vllm_available
from rlaif.config import EngineConfig
from rlaif.errors import EngineError

OK, WHY = vllm_available()


def test_missing_vllm_or_gpu_is_one_clear_error():
    if OK:
        pytest.skip("vllm and a CUDA GPU are present; the error path cannot be reached here")
    with pytest.raises(EngineError) as info:
        VLLMEngine(EngineConfig(kind="vllm", model="embedded:smollm2-135m-instruct"))
    assert str(info.value) == WHY
    assert WHY == VLLM_MISSING or "CUDA GPU" in WHY


@pytest.fixture(scope="module")
def engine():
    if not OK:
        pytest.skip(f"vllm engine not testable here: {WHY}")
    eng = VLLMEngine(EngineConfig(kind="vllm", model="embedded:smollm2-135m-instruct",
                                  gpu_memory_utilization=0.3, max_model_len=2048, dtype="bfloat16"))
    yield eng
    eng.close()


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_generates(engine):
    prompts = ["What is the capital of France?", "Name a fruit.", "Say hello."]
    out = engine.generate([GenerationRequest([{"role": "user", "content": p}], max_tokens=24, seed=1)
                           for p in prompts])
    again = engine.generate([GenerationRequest([{"role": "user", "content": prompts[0]}], max_tokens=24, seed=1)])
    assert len(out) == 3 and all(c.texts[0] for c in out)
    assert all(c.prompt_tokens > 0 and 0 < c.completion_tokens <= 24 for c in out)
    assert again[0].texts == out[0].texts
    [sampled] = engine.generate([GenerationRequest([{"role": "user", "content": "Name a fruit."}],
                                                   max_tokens=12, n=3, temperature=0.9, seed=7)])
    assert len(sampled.texts) == 3


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_option_logprobs(engine):
    reqs = [OptionRequest([{"role": "user", "content": "Which one is a fruit? (A) an apple (B) a brick. "
                                                       "Reply with the letter only."}],
                          prefill="The answer is (")]
    [got] = engine.option_logprobs(reqs, ["A", "B"])
    assert set(got) == {"A", "B"}
    assert all(math.isfinite(v) and v <= 0 for v in got.values())
    assert got["A"] != got["B"]
