"""What the openai engine sends, and how it reads option log-probs out of the answers.

Request bodies depend on the model and on the server:
- reasoning models (o1, o3, o4-mini, gpt-5; not the gpt-5-chat models) take `max_completion_tokens`
  and reject `max_tokens`, `temperature`, `top_p`, `stop` and `logprobs`;
- option scoring puts the prefill where `prefill_mode` says (see openai_engine's docstring): a raw
  `/v1/completions` prompt rendered here with the served model's chat template (`completions`), a
  final assistant message that vLLM continues (`continue_final_message`), or the end of the user turn.

Answers: chat completions carry `logprobs.content[0].top_logprobs` (objects with token/logprob),
completions carry `logprobs.top_logprobs[0]` (a token -> logprob mapping). Either way the listed
tokens that strip to an option are summed (`score_options`).
"""

from __future__ import annotations

import math
import re
from typing import Any, Sequence

from rlaif.backends.base import GenerationRequest, OptionLogprobs, from_listed
from rlaif.backends.local_prompts import prompt_text
from rlaif.config import EngineConfig
from rlaif.errors import EngineError

_REASONING = re.compile(r"(?:^|/)(?:o\d+|gpt-5)(?![\w.]*-chat)(?:[-.:]|$)")


def is_reasoning_model(model: str) -> bool:
    """OpenAI's reasoning models by name (o1, o3-mini, o4-mini, gpt-5, gpt-5-nano, openai/o3), not
    the chat variants (gpt-5-chat-latest), which take the usual parameters."""
    return bool(_REASONING.search(model.lower()))


def generation_body(model: str, chat: list[dict], r: GenerationRequest, n: int, done: int,
                    reasoning: bool) -> dict[str, Any]:
    """A chat completion asking for `n` more samples of `r` (`done` already answered: seeds go on)."""
    body: dict[str, Any] = dict(model=model, messages=chat)
    if reasoning:
        body["max_completion_tokens"] = r.max_tokens
    else:
        body.update(temperature=r.temperature, max_tokens=r.max_tokens, top_p=r.top_p)
        if r.stop:
            body["stop"] = list(r.stop)
    if n > 1:
        body["n"] = n
    if r.seed is not None:
        body["seed"] = r.seed + done
    return body


def option_body(mode: str, model: str, chat: list[dict], prefill: str, k: int,
                template: "ChatTemplate | None") -> tuple[str, dict[str, Any]]:
    """(route, body) of one next-token request with the `k` most likely tokens listed."""
    if mode == "completions":
        return "completions", dict(model=model, prompt=template.text(chat, prefill), max_tokens=1,
                                   temperature=0.0, logprobs=k)
    extra: dict[str, Any] = {}
    if prefill and mode == "continue_final_message":
        chat = chat + [{"role": "assistant", "content": prefill}]
        extra["extra_body"] = {"continue_final_message": True, "add_generation_prompt": False}
    elif prefill:
        chat = append_to_last_user(chat, prefill)
    return "chat", dict(model=model, messages=chat, max_tokens=1, temperature=0.0, logprobs=True,
                        top_logprobs=k, **extra)


class ChatTemplate:
    """The served model's chat template, applied here (prefill_mode `completions`): the text the local
    engines tokenise (rlaif.backends.local_prompts: the chat template with the generation prompt,
    then the prefill), as one prompt string. The engine adds its system prompt to the chat first."""

    def __init__(self, cfg: EngineConfig):
        from transformers import AutoTokenizer

        from rlaif.backends.embedded import resolve_model_dir

        path = resolve_model_dir(cfg.tokenizer)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise EngineError(f"engine.tokenizer {cfg.tokenizer!r} at {path} could not be loaded: "
                              f"{str(e).splitlines()[0]}") from None

    def text(self, chat: list[dict], prefill: str) -> str:
        return prompt_text(self.tokenizer, chat) + prefill


def score_options(listed: dict[str, float], options: Sequence[str]) -> OptionLogprobs:
    """Sum the probabilities of every listed token that strips to the option; floor the absent ones
    at log(min listed probability) - log 2."""
    return from_listed({o: [lp for tok, lp in listed.items() if tok.strip() == o.strip()] for o in options},
                       listed.values())


def _finite(token, value) -> bool:
    return isinstance(token, str) and isinstance(value, (int, float)) and math.isfinite(value)


def listed_logprobs(route: str, choice) -> dict[str, float]:
    """token -> logprob at the first generated position: the listed alternatives plus the sampled
    token, from a chat (`route` "chat") or a completions choice."""
    lp = getattr(choice, "logprobs", None)
    listed: dict[str, float] = {}
    if route == "chat":
        content = getattr(lp, "content", None) if lp is not None else None
        if not content:
            return {}
        for item in list(getattr(content[0], "top_logprobs", None) or []) + [content[0]]:
            token, value = getattr(item, "token", None), getattr(item, "logprob", None)
            if _finite(token, value):
                listed.setdefault(token, float(value))
        return listed
    tops = getattr(lp, "top_logprobs", None) if lp is not None else None
    if not tops:
        return {}
    listed = {t: float(v) for t, v in (tops[0] or {}).items() if _finite(t, v)}
    tokens, values = getattr(lp, "tokens", None) or [], getattr(lp, "token_logprobs", None) or []
    if tokens and values and _finite(tokens[0], values[0]):
        listed.setdefault(tokens[0], float(values[0]))
    return listed


def append_to_last_user(chat: list[dict], prefill: str) -> list[dict]:
    for i in range(len(chat) - 1, -1, -1):
        if chat[i].get("role") == "user":
            content = chat[i].get("content") or ""
            sep = "" if not content or content[-1].isspace() else "\n\n"
            chat = list(chat)
            chat[i] = {**chat[i], "content": content + sep + prefill}
            return chat
    return chat + [{"role": "user", "content": prefill}]


def cut_at_stop(text: str, stops: Sequence[str], reason: str) -> tuple[str, str]:
    """Cut at the first stop string, as a server would have (for models that take no `stop`)."""
    hits = [text.index(s) for s in stops if s and s in text]
    return (text[:min(hits)], "stop") if hits else (text, reason)


__all__ = ["is_reasoning_model", "generation_body", "option_body", "ChatTemplate", "score_options",
           "listed_logprobs", "append_to_last_user", "cut_at_stop"]
