"""The `vllm` engine: `vllm.LLM` in-process on a CUDA GPU, with prefix caching.

Prompts are built here with the tokenizer's chat template (the same text the transformers engine
builds) and handed to vLLM as token ids, so a prefill can follow the generation prompt and option
scoring sees exactly the tokens the other engines see. Requests go to vLLM in one call per batch,
each with its own SamplingParams (n, temperature, top_p, max_tokens, seed, stop); vLLM schedules them.

`option_logprobs` decodes one token at temperature 0 with `logprobs=k` and sums the probabilities of
the option's single-token spellings ("A", " A") found among the returned top-k token ids. vLLM
always returns the sampled token too, and its logprobs are the raw ones (`logprobs_mode`
"raw_logprobs", before penalties or temperature). An option outside the top-k gets the same floor
as the openai engine (log(min listed probability) - log 2) and is named in `floored`. Prefix
caching makes the shared prompt head (system prompt, few-shot exemplars, the two responses) nearly
free across the position-swapped and principle-ensemble requests the labeler sends.

Settings, as vLLM takes them (read in vLLM's source, not run here: no GPU on the machine this was
written on; the `gpu` tests in tests/engines/test_vllm_engine.py run them where one is):
- `device`: vLLM takes no device index (`DeviceConfig.device` is a device type, deprecated and set
  from the platform; vllm/config/device.py). A GPU is chosen with CUDA_VISIBLE_DEVICES, which vLLM
  reads when it counts devices (`cuda_device_count_stateless`) and its engine-core process inherits:
  `cuda:N` sets it to the N-th visible GPU while the engine starts (restored afterwards, so later
  processes such as `accelerate launch` still see every GPU). `cpu` is refused: use the
  transformers or gguf engine there.
- `tensor_parallel_size`, `max_num_seqs`, `quantization`, `max_model_len`, `gpu_memory_utilization`,
  `dtype` go to `vllm.LLM` as they are (None: vLLM's own default).
- sampling defaults: like `vllm serve`, `LLM` reads the model's generation_config.json
  (EngineArgs.generation_config defaults to "auto"), but `LLM.generate` applies it only when no
  SamplingParams are given. Requests here always set temperature and top_p (as an OpenAI client
  does), so the model's `top_k`, `min_p` and `repetition_penalty` are taken from
  `LLM.get_default_sampling_params()` for every request: what a vLLM server does with a request
  that leaves them out. (The transformers engine applies a generation_config's repetition_penalty
  through `generate` too, but samples with top_k=0.) A `pure` request (the round KL's samples)
  takes none of them: `PURE_SAMPLING` sets each of SamplingParams' distribution knobs to off.
- `close()` frees the GPU the way vLLM's own tests do (tests/conftest.py, VllmRunner.__exit__): stop
  the engine-core process, drop the LLM, then `cleanup_dist_env_and_memory()`
  (vllm/distributed/parallel_state.py: model-parallel groups and torch.distributed destroyed, gc,
  CUDA cache emptied), so a pipeline can load vLLM again after training.

vLLM is an optional extra (`pip install 'rlaif-kit[vllm]'`) and needs a CUDA GPU; without either the
constructor raises one clear `EngineError`.
"""

from __future__ import annotations

import math
import os
import re
import time
from contextlib import contextmanager
from typing import Sequence

from rlaif.backends.base import (
    Completion, GenerationRequest, OptionLogprobs, OptionRequest, from_listed,
)
from rlaif.backends.local_prompts import LocalPrompts
from rlaif.config import EngineConfig
from rlaif.errors import EngineError

VLLM_MISSING = "vllm is not installed: pip install 'rlaif-kit[vllm]' (needs a CUDA GPU)"


def vllm_available() -> tuple[bool, str]:
    """(True, "") where vllm imports and a CUDA GPU is visible; else (False, why)."""
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False, VLLM_MISSING
    try:
        import torch
    except ImportError:
        return False, "torch is not installed"
    if not torch.cuda.is_available():
        return False, "the vllm engine needs a CUDA GPU and none is visible here"
    return True, ""


GENERATION_DEFAULTS = ("top_k", "min_p", "repetition_penalty")  # what a request here leaves to the model
# a `pure` request: the model's own distribution (SamplingParams' "off" values; top_k -1 is "off" in
# every vLLM version, 0 only in recent ones)
PURE_SAMPLING = dict(top_k=-1, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0, frequency_penalty=0.0,
                     min_tokens=0)


def visible_devices(device: str, tensor_parallel_size: int, visible: str | None) -> str | None:
    """The CUDA_VISIBLE_DEVICES a vLLM engine on `device` needs (None: leave it as it is); `visible`
    is its current value. `cuda:N` is the N-th GPU this process sees."""
    if device in ("auto", "cuda"):
        return None
    match = re.fullmatch(r"cuda:(\d+)", device)
    if match is None:
        raise EngineError(f"device {device!r}: the vllm engine runs on CUDA GPUs; expected auto, cuda or cuda:N "
                          "(on a CPU use the transformers or gguf engine)")
    if tensor_parallel_size > 1:
        raise EngineError(f"device {device!r} names one GPU but tensor_parallel_size is {tensor_parallel_size}; "
                          "choose the GPUs with CUDA_VISIBLE_DEVICES and set device: cuda")
    index = int(match.group(1))
    ids = [x.strip() for x in visible.split(",") if x.strip()] if visible is not None else None
    if ids is None:
        return str(index)
    if index >= len(ids):
        raise EngineError(f"device {device!r}: this process sees {len(ids)} GPU(s) (CUDA_VISIBLE_DEVICES={visible})")
    return ids[index]


def llm_kwargs(cfg: EngineConfig, path) -> dict:
    """The `vllm.LLM` arguments an EngineConfig asks for (settings left at None are vLLM's own)."""
    kwargs = dict(model=str(path), enable_prefix_caching=True, gpu_memory_utilization=cfg.gpu_memory_utilization,
                  dtype=cfg.dtype, tensor_parallel_size=cfg.tensor_parallel_size,
                  max_logprobs=max(20, cfg.top_logprobs), seed=0)
    for name in ("max_model_len", "max_num_seqs", "quantization"):
        if getattr(cfg, name) is not None:
            kwargs[name] = getattr(cfg, name)
    return kwargs


@contextmanager
def _environ(name: str, value: str | None):
    """`name=value` in os.environ for the block (None: unchanged), restored afterwards."""
    if value is None:
        yield
        return
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


class VLLMEngine(LocalPrompts):
    name = "vllm"

    def __init__(self, cfg: EngineConfig, **llm_kwargs_extra):
        gpus = visible_devices(cfg.device, cfg.tensor_parallel_size, os.environ.get("CUDA_VISIBLE_DEVICES"))
        ok, why = vllm_available()
        if not ok:
            raise EngineError(why)
        from vllm import LLM

        from rlaif.backends.embedded import resolve_model_dir

        self.cfg = cfg
        self.model = cfg.model
        path = resolve_model_dir(cfg.model)
        kwargs = {**llm_kwargs(cfg, path), **llm_kwargs_extra}
        started = time.perf_counter()
        try:
            with _environ("CUDA_VISIBLE_DEVICES", gpus):
                self.llm = LLM(**kwargs)
        except Exception as e:  # bad model dir, out of GPU memory, unsupported architecture...
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise EngineError(f"vllm could not load model {cfg.model!r} from {path}: {first}") from None
        self.load_seconds = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()
        self.context_length = self.llm.llm_engine.model_config.max_model_len
        defaults = self.llm.get_default_sampling_params()  # the model's generation_config, as vLLM reads it
        self.sampling_defaults = {k: getattr(defaults, k) for k in GENERATION_DEFAULTS}
        self._option_ids: dict[str, list[int]] = {}
        self.counters = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                         "options_floored": 0, "seconds": 0.0}

    def __repr__(self) -> str:
        return f"VLLMEngine(model={self.model!r})"

    # ------------------------------------------------------------------ generate (prompts: LocalPrompts)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        from vllm import SamplingParams

        started = time.perf_counter()
        encoded = self._generation_inputs(requests)
        params = [SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens,
                                 seed=r.seed, stop=list(r.stop or []) or None,
                                 **(PURE_SAMPLING if r.pure else self.sampling_defaults))
                  for r in requests]
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        results = []
        for ids, out in zip(encoded, outputs):
            samples = sorted(out.outputs, key=lambda o: o.index)
            used = sum(len(o.token_ids) for o in samples)
            results.append(Completion([o.text.strip() for o in samples], len(ids), used,
                                      [o.finish_reason or "" for o in samples]))
            self.counters["prompt_tokens"] += len(ids)
            self.counters["completion_tokens"] += used
        self.counters["requests"] += len(requests)
        self.counters["seconds"] += time.perf_counter() - started
        return results

    # ------------------------------------------------------------------ option scoring

    def option_logprobs(self, requests: Sequence[OptionRequest], options: Sequence[str]) -> list[OptionLogprobs]:
        from vllm import SamplingParams

        started = time.perf_counter()
        option_ids, encoded = self._scoring_inputs(requests, options)
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.cfg.top_logprobs)
        outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], params, use_tqdm=False)
        results = []
        for ids, out in zip(encoded, outputs):
            step = (out.outputs[0].logprobs or [None])[0]
            if not step:
                raise EngineError(f"vllm returned no logprobs for model {self.model!r}")
            listed = {int(t): float(getattr(lp, "logprob", lp)) for t, lp in step.items()}
            results.append(_score(listed, option_ids))
            self.counters["prompt_tokens"] += len(ids)
            self.counters["options_floored"] += len(results[-1].floored)
        self.counters["requests"] += len(requests)
        self.counters["seconds"] += time.perf_counter() - started
        return results

    def stats(self) -> dict:
        return {"engine": self.name, "model": self.model,
                **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.counters.items()}}

    def close(self) -> None:
        """Free the GPU (module docstring): a pipeline may load vLLM again after training."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        core = getattr(llm.llm_engine, "engine_core", None)  # V1: the process holding weights and KV cache
        if core is not None:
            core.shutdown()
        del llm, core
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()


def _score(listed: dict[int, float], option_ids: dict[str, list[int]]) -> OptionLogprobs:
    """logsumexp over an option's token ids found in the top-k; a floor below the list otherwise."""
    return from_listed({o: [listed[i] for i in ids if i in listed and math.isfinite(listed[i])]
                        for o, ids in option_ids.items()}, listed.values())


__all__ = ["VLLMEngine", "vllm_available", "visible_devices", "llm_kwargs"]
