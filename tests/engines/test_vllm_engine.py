"""The vllm engine. The settings it hands vLLM (device, parallelism, quantization) are checked here on
any machine; the engine itself (embedded model, generation_config defaults, freeing the GPU on
close) needs vllm and a CUDA GPU and is skipped with the reason elsewhere."""

from __future__ import annotations

import math

import pytest

from rlaif.backends.base import GenerationRequest, OptionRequest
from rlaif.backends.vllm_engine import VLLM_MISSING, VLLMEngine, llm_kwargs, visible_devices, vllm_available
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


def test_cuda_n_is_the_nth_visible_gpu():
    assert visible_devices("auto", 1, None) is None and visible_devices("cuda", 4, "0,1,2,3") is None
    assert visible_devices("cuda:1", 1, None) == "1"
    assert visible_devices("cuda:1", 1, "4,6") == "6"  # the second GPU this process sees
    assert visible_devices("cuda:0", 1, " 3 , 5") == "3"


@pytest.mark.parametrize("device,tp,visible,says", [
    ("cpu", 1, None, "transformers or gguf"), ("mps", 1, None, "expected auto, cuda or cuda:N"),
    ("cuda:2", 1, "0,1", "sees 2 GPU"), ("cuda:1", 2, None, "tensor_parallel_size is 2"),
])
def test_devices_vllm_cannot_use_are_one_clear_error(device, tp, visible, says):
    with pytest.raises(EngineError, match=says):
        visible_devices(device, tp, visible)


def test_device_errors_come_before_loading_anything():
    with pytest.raises(EngineError, match="transformers or gguf"):
        VLLMEngine(EngineConfig(kind="vllm", model="embedded:smollm2-135m-instruct", device="cpu"))


def test_llm_arguments_carry_the_engine_config():
    cfg = EngineConfig(kind="vllm", model="m", tensor_parallel_size=2, max_num_seqs=64, quantization="awq",
                       max_model_len=4096, gpu_memory_utilization=0.5, dtype="bfloat16")
    assert llm_kwargs(cfg, "/models/m") == {
        "model": "/models/m", "enable_prefix_caching": True, "gpu_memory_utilization": 0.5, "dtype": "bfloat16",
        "tensor_parallel_size": 2, "max_logprobs": 20, "seed": 0, "max_model_len": 4096, "max_num_seqs": 64,
        "quantization": "awq"}
    plain = llm_kwargs(EngineConfig(kind="vllm", model="m"), "/m")
    assert not {"max_model_len", "max_num_seqs", "quantization"} & set(plain)  # vLLM's own defaults
    assert plain["tensor_parallel_size"] == 1


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


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_applies_the_models_generation_config(tmp_path, embedded_dir):
    """A model whose generation_config.json asks for top_k and repetition_penalty gets them on every
    request, as `vllm serve` gives them to a request that leaves them out."""
    import json
    import shutil

    if not OK:
        pytest.skip(f"vllm engine not testable here: {WHY}")
    model = tmp_path / "model"
    shutil.copytree(embedded_dir, model)
    gen = json.loads((model / "generation_config.json").read_text()) if (model / "generation_config.json").exists() else {}
    (model / "generation_config.json").write_text(json.dumps({**gen, "top_k": 7, "repetition_penalty": 1.25,
                                                              "min_p": 0.05}))
    eng = VLLMEngine(EngineConfig(kind="vllm", model=str(model), gpu_memory_utilization=0.3, max_model_len=1024))
    try:
        assert eng.sampling_defaults == {"top_k": 7, "min_p": 0.05, "repetition_penalty": 1.25}
        [c] = eng.generate([GenerationRequest([{"role": "user", "content": "Count to five."}], max_tokens=8)])
        assert c.texts[0]
    finally:
        eng.close()


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_pure_requests_ignore_the_models_generation_config(tmp_path, embedded_dir):
    """A `pure` request (the round KL's samples) takes none of the generation_config's options: the
    same seeded temperature-1 samples from a model with top_k, min_p and repetition_penalty in its
    generation_config as from the same weights without them."""
    import json
    import shutil

    if not OK:
        pytest.skip(f"vllm engine not testable here: {WHY}")
    texts = []
    for name, options in (("plain", {}), ("options", {"top_k": 7, "repetition_penalty": 1.5, "min_p": 0.1})):
        model = tmp_path / name
        shutil.copytree(embedded_dir, model)
        path = model / "generation_config.json"
        gen = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**{k: v for k, v in gen.items() if k not in ("top_k", "min_p",
                                                                                 "repetition_penalty")}, **options}))
        eng = VLLMEngine(EngineConfig(kind="vllm", model=str(model), gpu_memory_utilization=0.3, max_model_len=1024))
        try:
            reqs = [GenerationRequest([{"role": "user", "content": f"Tell me about {t}."}], temperature=1.0,
                                      max_tokens=24, seed=s, pure=True) for s, t in enumerate(("cats", "tea", "rain"))]
            texts.append([c.texts[0] for c in eng.generate(reqs)])
        finally:
            eng.close()
    assert texts[0] == texts[1]


@pytest.mark.gpu
@pytest.mark.slow
def test_vllm_close_frees_the_gpu_and_a_second_engine_loads():
    import torch

    if not OK:
        pytest.skip(f"vllm engine not testable here: {WHY}")
    free_before, total = torch.cuda.mem_get_info()
    cfg = EngineConfig(kind="vllm", model="embedded:smollm2-135m-instruct", gpu_memory_utilization=0.5,
                       max_model_len=1024, device="cuda:0")
    first = VLLMEngine(cfg)
    held = free_before - torch.cuda.mem_get_info()[0]
    first.close()
    free_after = torch.cuda.mem_get_info()[0]
    assert held > 0.3 * total, "vLLM should have reserved its share of the GPU"
    assert free_before - free_after < 0.05 * total, "close() left GPU memory held"
    second = VLLMEngine(cfg)  # e.g. after training, in the same pipeline process
    try:
        [c] = second.generate([GenerationRequest([{"role": "user", "content": "Say hello."}], max_tokens=6)])
        assert c.texts[0]
    finally:
        second.close()
