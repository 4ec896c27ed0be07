"""Prompt building shared by the engines that hold a tokenizer in-process (transformers, vllm, gguf)
and by the trainers (rlaif/train/encoding.py), so a policy is trained under the very prompt it
samples from.

All build the same text: the engine block's system prompt first (unless the chat has its own), the
chat template with the generation prompt (or a plain "Role: text" transcript for base models
without one), then the prefill, tokenised without extra special tokens. So option scoring,
generation and training see exactly the same prompt tokens on every engine.
"""

from __future__ import annotations

from rlaif.backends.base import option_spellings
from rlaif.errors import EngineError, UserError


def with_system_prompt(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """The chat with `system_prompt` as its first turn, unless it has a system turn already."""
    if system_prompt and not (messages and messages[0]["role"] == "system"):
        return [{"role": "system", "content": system_prompt}] + list(messages)
    return list(messages)


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def transcript(chat: list[dict]) -> str:
    """A chat as a base model without a chat template reads it: "Role: text" turns, blank lines
    between, and the assistant's turn opened."""
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in chat) + "Assistant:"


def prompt_text(tokenizer, messages: list[dict], system_prompt: str | None = None) -> str:
    """The text a model reads before its reply to `messages`."""
    chat = with_system_prompt(messages, system_prompt)
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    return transcript(chat)


class LocalPrompts:
    """Mixin; the engine sets `cfg` (an EngineConfig), `tokenizer`, `context_length`, `model`
    and `_option_ids = {}`."""

    def _prompt_ids(self, messages: list[dict], prefill: str = "") -> list[int]:
        text = prompt_text(self.tokenizer, messages, self.cfg.system_prompt)
        return self.tokenizer(text + prefill, add_special_tokens=False)["input_ids"]

    def _check_length(self, n_prompt: int, max_tokens: int) -> None:
        if n_prompt + max_tokens > self.context_length:
            raise UserError(f"a prompt of {n_prompt} tokens plus max_tokens={max_tokens} exceeds the "
                            f"context length of {self.model} ({self.context_length} tokens)")

    def _generation_inputs(self, requests) -> list[list[int]]:
        """Each generation request's prompt ids, checked to leave room for its `max_tokens`."""
        encoded = [self._prompt_ids(r.messages) for r in requests]
        for ids, r in zip(encoded, requests):
            self._check_length(len(ids), r.max_tokens)
        return encoded

    def _scoring_inputs(self, requests, options) -> tuple[dict[str, list[int]], list[list[int]]]:
        """Option scoring's inputs: each option's token ids, and each request's prompt ids (checked
        to leave room for one more token)."""
        option_ids = {o: self.option_token_ids(o) for o in options}
        encoded = [self._prompt_ids(r.messages, r.prefill) for r in requests]
        for ids in encoded:
            self._check_length(len(ids), 1)
        return option_ids, encoded

    def check_prompt(self, messages: list[dict], max_tokens: int) -> None:
        """Raise the context-length UserError now if this prompt cannot fit `max_tokens` more."""
        self._check_length(len(self._prompt_ids(messages)), max_tokens)

    def option_token_ids(self, option: str) -> list[int]:
        """Every single-token spelling of an option ("A", " A"), deduplicated."""
        if option not in self._option_ids:
            ids = []
            for spelling in option_spellings(option):
                toks = self.tokenizer(spelling, add_special_tokens=False)["input_ids"]
                if len(toks) == 1 and toks[0] not in ids:
                    ids.append(toks[0])
            if not ids:
                raise EngineError(f"option {option!r} is not a single token for {self.model}; "
                                  "use options that are (A/B, digits)")
            self._option_ids[option] = ids
        return self._option_ids[option]

    def is_single_token(self, option: str) -> bool:
        """Whether some spelling of `option` ("10", " 10") is one token of this tokenizer."""
        try:
            self.option_token_ids(option)
        except EngineError:
            return False
        return True
