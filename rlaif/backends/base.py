"""The engine protocol every backend implements; stages only ever see this.

- `generate(requests)`: chat messages in, `n` texts out per request.
- `option_logprobs(requests, options)`: for each chat prompt, the log-probability that the next
  token spells each option (summed over every single-token spelling, e.g. "A" and " A").
- `close()`.
- optional `is_single_token(option) -> bool`: engines that hold the tokenizer say whether `option`
  has a single-token spelling (so `option_logprobs` can score it); see `option_is_single_token`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Protocol, Sequence, runtime_checkable

Message = dict  # {"role": "system"|"user"|"assistant", "content": str}


@dataclass
class GenerationRequest:
    messages: list[Message]
    temperature: float = 0.0
    max_tokens: int = 256
    n: int = 1
    seed: int | None = None
    stop: list[str] | None = None
    top_p: float = 1.0
    # sample the model's own distribution at `temperature` / `top_p` only: none of the sampling
    # options a model's generation_config sets (repetition penalty, top-k, min-p, ...) apply. What
    # an estimator over samples needs (the round KL); local engines honour it (transformers, vllm)
    pure: bool = False


@dataclass
class Completion:
    texts: list[str]  # one per sample (len == request.n)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reasons: list[str] = field(default_factory=list)


@dataclass
class OptionRequest:
    """A chat prompt whose next token should be one of the options.

    `prefill` starts the assistant turn (e.g. "The better response is (") so the option is the very
    next token. Engines that cannot prefill (chat APIs) put it at the end of the last user turn.
    """

    messages: list[Message]
    prefill: str = ""


class OptionLogprobs(dict):
    """option -> log-probability of the next token spelling it. `floored` lists options the engine
    did not see (e.g. outside a server's `top_logprobs`) and gave a floor value instead."""

    def __init__(self, values: dict[str, float], floored: Sequence[str] = ()):
        super().__init__(values)
        self.floored = tuple(floored)


@runtime_checkable
class Engine(Protocol):
    name: str  # engine kind: "transformers", "vllm", "openai"
    model: str  # what was loaded, as the user named it

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]: ...

    def option_logprobs(
        self, requests: Sequence[OptionRequest], options: Sequence[str]
    ) -> list[OptionLogprobs]: ...

    def close(self) -> None: ...


def independent_requests(*engines) -> bool:
    """True when every engine answers each request on its own, whatever else is in the batch, and can
    be called from several threads (HTTP engines set `independent_requests = True`): a stage over
    them may pass `fixed_batches=False`, so a re-run sends only what is missing and a failed batch
    is replayed concurrently. Local engines pad batches, so their batches stay fixed."""
    return all(getattr(e, "independent_requests", False) for e in engines)


def from_listed(hits: dict[str, list[float]], listed: Iterable[float]) -> OptionLogprobs:
    """Option scores from the top log-probs an engine or server listed for the next token: each
    option gets the log of the summed probabilities of its listed tokens (`hits`: option -> their
    log-probs); an option with none listed gets a floor, log(the least listed probability) - log 2,
    and is named in `floored`."""
    floor = min(listed) - math.log(2)
    values, floored = {}, []
    for option, lps in hits.items():
        if lps:
            top = max(lps)
            values[option] = top + math.log(sum(math.exp(lp - top) for lp in lps))
        else:
            values[option] = floor
            floored.append(option)
    return OptionLogprobs(values, floored)


def option_spellings(option: str) -> list[str]:
    """Surface forms a tokenizer may use for an option as the next token: "A", " A"."""
    option = option.strip()
    return [option, " " + option]


def option_is_single_token(engine, option: str) -> bool | None:
    """Whether `engine` can score `option` as one next token: True or False where the engine knows
    its tokenizer (`is_single_token`), None where it cannot tell (a server's `top_logprobs`)."""
    probe = getattr(engine, "is_single_token", None)
    return None if probe is None else bool(probe(option))
