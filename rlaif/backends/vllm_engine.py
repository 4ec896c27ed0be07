"""The `vllm` engine: `vllm.LLM` in-process on a CUDA GPU, with prefix caching.

Prompts are built here with the tokenizer's chat template (the same text the transformers engine
builds) and handed to vLLM as token ids, so a prefill can follow the generation prompt and option
scoring sees exactly the tokens the other engines see. Requests go to vLLM in one call per batch,
each with its own SamplingParams (n, temperature, top_p, max_tokens, seed, stop); vLLM schedules them.

`option_logprobs` decodes one token at temperature 0 with `logprobs=k` and sums the probabilities of
the option's single-token spellings ("A", " A") found among the returned top-k token ids. vLLM
always returns the sampled token too. An option outside the top-k gets the same floor as the openai
engine (log(min listed probability) - log 2) and is named in `floored`. Prefix caching makes the
shared prompt head (system prompt, few-shot exemplars, the two responses) nearly free across the
position-swapped and principle-ensemble requests the labeler sends.

vLLM is an optional extra (`pip install 'rlaif[vllm]'`) and needs a CUDA GPU; without either the
constructor raises one clear `EngineError`.
"""

from __future__ import annotations

import math
import time
from typing import Sequence

from rlaif.backends.base import (
    Completion, GenerationRequest, OptionLogprobs, OptionRequest,
)
from rlaif.backends.local_prompts import LocalPrompts
from rlaif.config import EngineConfig
from rlaif.errors import EngineError

VLLM_MISSING = "vllm is not installed: pip install 'rlaif[vllm]' (needs a CUDA GPU)"


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


class VLLMEngine(LocalPrompts):
    name = "vllm"

    def __init__(self, cfg: EngineConfig, **llm_kwargs):
        ok, why = vllm_available()
        if not ok:
            raise EngineError(why)
        from vllm import LLM

        from rlaif.backends.embedded import resolve_model_dir

        self.cfg = cfg
        self.model = cfg.model
        path = resolve_model_dir(cfg.model)
        kwargs = dict(model=str(path), enable_prefix_caching=True,
                      gpu_memory_utilization=cfg.gpu_memory_utilization,
                      dtype=cfg.dtype,
                      max_logprobs=max(20, cfg.top_logprobs), seed=0)
        if cfg.max_model_len is not None:
            kwargs["max_model_len"] = cfg.max_model_len
        kwargs.update(llm_kwargs)
        started = time.perf_counter()
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:  # bad model dir, out of GPU memory, unsupported architecture...
            first = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise EngineError(f"vllm could not load model {cfg.model!r} from {path}: {first}") from None
        self.load_seconds = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()
        self.context_length = self.llm.llm_engine.model_config.max_model_len
        self._option_ids: dict[str, list[int]] = {}
        self.counters = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                         "options_floored": 0, "seconds": 0.0}

    def __repr__(self) -> str:
        return f"VLLMEngine(model={self.model!r})"

    # ------------------------------------------------------------------ generate (prompts: LocalPrompts)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        from vllm import SamplingParams

        started = time.perf_counter()
        encoded = [self._prompt_ids(r.messages) for r in requests]
        params = []
        for ids, r in zip(encoded, requests):
            self._check_length(len(ids), r.max_tokens)
            params.append(SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p,
                                         max_tokens=r.max_tokens, seed=r.seed, stop=list(r.stop or []) or None))
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
        option_ids = {o: self.option_token_ids(o) for o in options}
        encoded = [self._prompt_ids(r.messages, r.prefill) for r in requests]
        for ids in encoded:
            self._check_length(len(ids), 1)
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
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        del llm
        try:
            import gc

            import torch

            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass


def _score(listed: dict[int, float], option_ids: dict[str, list[int]]) -> OptionLogprobs:
    """logsumexp over an option's token ids found in the top-k; a floor below the list otherwise."""
    floor = min(listed.values()) - math.log(2)
    values, floored = {}, []
    for option, ids in option_ids.items():
        hits = [listed[i] for i in ids if i in listed and math.isfinite(listed[i])]
        if hits:
            top = max(hits)
            values[option] = top + math.log(sum(math.exp(v - top) for v in hits))
        else:
            values[option] = floor
            floored.append(option)
    return OptionLogprobs(values, floored)


__all__ = ["VLLMEngine", "vllm_available"]
