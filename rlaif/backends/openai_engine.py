"""The `openai` engine: any OpenAI-compatible server (OpenAI, a vLLM server, llama.cpp, Ollama).

Requests go through `OpenAITransport` (rlaif.backends.openai_transport): one client on the
engine's own event loop, retries, which answers are fatal, and the replay of a failed batch.

Option scoring asks for one token at temperature 0 with `top_logprobs=k` (servers cap k at 20).
The prefill ("The answer is (") must continue the assistant turn, as on the local engines, or the
labels differ from theirs. `prefill_mode` picks how (`auto` decides once, on first use):
- `completions`: the chat template is rendered here with `tokenizer` (the served model's tokenizer:
  `embedded:NAME`, a model dir or a hub id) and sent as a raw prompt to `/v1/completions`, which
  every server with a completions route takes (llama-cpp-python's chat route always opens a fresh
  assistant turn: its Jinja2ChatFormatter renders with add_generation_prompt=True);
- `continue_final_message`: the prefill is a final assistant message with vLLM's chat extensions
  `continue_final_message=True, add_generation_prompt=False` (vLLM's ChatCompletionRequest);
- `user_turn`: the prefill ends the last user turn (OpenAI's API, which cannot prefill); `stats()`
  carries a warning, since labels then differ from a local engine's on the same weights.
`auto`: `completions` when `tokenizer` is set, else `continue_final_message` when `/models` lists
the model as `owned_by: vllm`, else `user_turn`. Request bodies and reading the listed tokens (an
option's log-probability sums every listed token that strips to it; an unlisted option gets a floor
and is named in `floored`) live in rlaif.backends.openai_requests.

Reasoning models (o1, o3, o4-mini, gpt-5; not gpt-5-chat) take `max_completion_tokens` (which also
pays for their hidden reasoning) instead of `max_tokens`, and reject `temperature`, `top_p`, `stop`
and `logprobs`: generation sends none of those (stop strings are cut here) and says so in `stats()`;
option scoring is refused with one clear message before any request.

The API key is read from the environment variable `api_key_env` and handed to the client only; it is
never logged, never put into an error message, `stats()` or `repr()`. A local server that needs no
key gets the placeholder "not-needed".
"""

from __future__ import annotations

import os
from typing import Sequence

from rlaif.backends.base import Completion, GenerationRequest, OptionLogprobs, OptionRequest
from rlaif.backends.openai_requests import (
    ChatTemplate, cut_at_stop, generation_body, is_reasoning_model, listed_logprobs, option_body, score_options,
)
from rlaif.backends.openai_transport import FATAL_STATUS, RETRY_STATUS, OpenAITransport
from rlaif.config import EngineConfig
from rlaif.errors import EngineError


class OpenAIEngine(OpenAITransport):
    name = "openai"
    independent_requests = True  # one HTTP request per prompt, thread-safe (rlaif.runner.independent_requests)

    def __init__(self, cfg: EngineConfig, *, backoff_initial: float = 1.0, backoff_max: float = 30.0,
                 retry_after_max: float = 60.0, connect_attempts: int = 3, refusals_before_fatal: int = 5):
        try:
            import openai  # noqa: F401
            import tenacity  # noqa: F401
        except ImportError as e:
            raise EngineError(f"the openai engine needs the '{e.name}' package: pip install openai tenacity") from None
        if not cfg.model:
            raise EngineError("openai engine: no model name given; use openai:MODEL or engine.model")
        super().__init__(cfg, backoff_initial=backoff_initial, backoff_max=backoff_max,
                         retry_after_max=retry_after_max, connect_attempts=connect_attempts,
                         refusals_before_fatal=refusals_before_fatal)
        if cfg.base_url is None and not os.environ.get(self.key_env):
            raise EngineError(f"openai engine at {self.url}: no API key; set {self.key_env} "
                              "(or give engine.base_url for a local server)")
        if cfg.prefill_mode == "completions" and not cfg.tokenizer:
            raise EngineError("openai engine: prefill_mode 'completions' renders the chat template here, so it "
                              "needs engine.tokenizer (the served model's tokenizer: embedded:NAME, a dir, a hub id)")
        self.reasoning = is_reasoning_model(cfg.model)
        self.prefill_mode: str | None = None if cfg.prefill_mode == "auto" else cfg.prefill_mode
        self.warnings: list[str] = []
        self._template = None  # the served model's chat template (prefill_mode completions)
        if self.reasoning:
            self._warn(f"{self.model!r} is a reasoning model: requests carry max_completion_tokens (which also pays "
                       "for hidden reasoning) and no temperature, top_p or stop; stop strings are cut here")

    def __repr__(self) -> str:
        return f"OpenAIEngine(model={self.model!r}, base_url={self.url!r}, key_env={self.key_env!r})"

    # ------------------------------------------------------------------ protocol

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        return self._run(self._batch(self._generate_one, list(requests)))

    def option_logprobs(self, requests: Sequence[OptionRequest], options: Sequence[str]) -> list[OptionLogprobs]:
        options = list(options)
        if not options or any(not isinstance(o, str) or not o.strip() for o in options):
            raise EngineError(f"option_logprobs needs non-empty option strings, got {options!r}")
        if self.reasoning:
            raise EngineError(f"openai engine at {self.url}: {self.model!r} is a reasoning model, which returns no "
                              "logprobs, so option scoring (labels, direct scores) is impossible with it; judge with "
                              "a chat model that returns logprobs (e.g. gpt-4.1, gpt-4o) or a local model")
        if self.prefill_mode is None:
            self._run(self._resolve_prefill())
        if self.prefill_mode == "completions" and self._template is None:
            self._template = ChatTemplate(self.cfg)  # loaded here, not on the engine's event loop
        return self._run(self._batch(self._options_one, list(requests), options))

    def stats(self) -> dict:
        out = {"engine": self.name, "model": self.model, "base_url": self.url,
               **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.counters.items()},
               "retry_reasons": dict(sorted(self.retry_reasons.items())), "reasoning_model": self.reasoning,
               "prefill_mode": self.prefill_mode}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def _warn(self, text: str) -> None:
        if text not in self.warnings:
            self.warnings.append(text)

    # ------------------------------------------------------------------ where the prefill goes

    async def _resolve_prefill(self) -> None:
        """`auto`: decide once how the prefill reaches the assistant turn (module docstring)."""
        if self.prefill_mode is not None:
            return
        if self.cfg.tokenizer:
            self.prefill_mode = "completions"
            return
        owners: set[str] = set()
        try:
            page = await self._get_client().models.list()
            owners = {str(getattr(m, "owned_by", "")) for m in page.data}
        except Exception:
            pass  # no /models: judged below as a server that cannot continue a turn
        if "vllm" in owners:
            self.prefill_mode = "continue_final_message"
            return
        self.prefill_mode = "user_turn"
        self._warn(f"the server at {self.url} (models owned by {', '.join(sorted(owners)) or 'unknown'}) cannot be "
                   "asked to continue an assistant turn, so option scoring puts the prefill at the end of the user "
                   "turn and labels differ from a local engine's on the same weights; set engine.tokenizer to the "
                   "served model's tokenizer to send raw completions instead (llama.cpp, vLLM)")

    # ------------------------------------------------------------------ messages

    def _chat(self, messages: list[dict]) -> list[dict]:
        chat = [dict(m) for m in messages]
        if self.cfg.system_prompt and not (chat and chat[0].get("role") == "system"):
            chat.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        return chat

    async def _generate_one(self, r: GenerationRequest, fresh: dict) -> Completion:
        texts: list[str] = []
        reasons: list[str] = []
        prompt_tokens = completion_tokens = 0
        chat = self._chat(r.messages)
        # Some servers (llama.cpp) ignore `n`; ask again for what is missing.
        while len(texts) < r.n:
            want = r.n - len(texts)
            kwargs = generation_body(self.model, chat, r, want, len(texts), self.reasoning)
            resp = await self._create("chat", kwargs, fresh)
            for c in sorted(resp.choices, key=lambda c: c.index or 0)[:want]:
                text, reason = (c.message.content or ""), (c.finish_reason or "")
                if self.reasoning and r.stop:  # the stop strings the model could not be sent
                    text, reason = cut_at_stop(text, r.stop, reason)
                texts.append(text.strip())
                reasons.append(reason)
            usage = getattr(resp, "usage", None)
            if usage is not None:
                prompt_tokens = prompt_tokens or (usage.prompt_tokens or 0)
                completion_tokens += usage.completion_tokens or 0
        self.counters["prompt_tokens"] += prompt_tokens
        self.counters["completion_tokens"] += completion_tokens
        return Completion(texts, prompt_tokens, completion_tokens, reasons)

    async def _options_one(self, r: OptionRequest, options: list[str], fresh: dict) -> OptionLogprobs:
        route, kwargs = option_body(self.prefill_mode, self.model, self._chat(r.messages), r.prefill,
                                    self.cfg.top_logprobs, self._template)
        resp = await self._create(route, kwargs, fresh)
        usage = getattr(resp, "usage", None)
        if usage is not None:
            self.counters["prompt_tokens"] += usage.prompt_tokens or 0
        listed = listed_logprobs(route, resp.choices[0])
        if not listed:
            raise self._stop_everything(EngineError(
                f"openai engine at {self.url}: the server returned no logprobs for model {self.model!r}; option "
                "scoring needs a server that returns logprobs/top_logprobs (OpenAI chat models, vLLM, llama.cpp)"))
        result = score_options(listed, options)
        self.counters["options_floored"] += len(result.floored)
        return result


__all__ = ["OpenAIEngine", "score_options", "is_reasoning_model", "RETRY_STATUS", "FATAL_STATUS"]
