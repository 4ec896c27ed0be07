"""A test-only judge whose option log-probabilities follow a checkable rule with a known accuracy.

It implements the Engine protocol (rlaif/backends/base.py) without a model, so tests can feed the
labeler, the judge check and anything else that takes a judge a labeler of known quality.

Rules
- "shorter": the shorter reply wins. Pairwise prompts (options "A", "B"): the two replies are read
  from the last `<reply_a>…</reply_a>` and `<reply_b>…</reply_b>` fences of the last user message
  (label_pairwise.yaml, label_cot.yaml; few-shot examples come earlier in the same message, so the
  last fences are the pair being judged). The shorter reply (fewer words; on equal words, fewer
  characters) gets probability `accuracy`, the other 1 − accuracy; an exact tie gets 0.5 / 0.5.
  Direct-score prompts (options "1".."9", label_direct.yaml, reply in `<reply>…</reply>`): the digit

      d = clamp(9 − words // 6, 1, 9)      (≤ 5 words -> 9, 6–11 -> 8, ..., ≥ 48 words -> 1)

  gets probability `accuracy`, the other eight digits share 1 − accuracy evenly. "10" is two tokens
  here (`is_single_token`: one character, one token, as SmolLM2 splits numbers into digits); the
  follow-up request (option "0" after a prefill ending in "1"), or "10" asked as a first-token
  option anyway, gets log(1e-6).
- "random": the control. The same confidence, but the side (or the digit) comes from a seeded hash
  of the request's messages, independent of the replies' lengths, so its labels carry no signal.
- "first": pure position bias: the reply shown as (A) wins with `accuracy`; direct scores favour 5 for
  every reply.
Planted biases, for the judge audit's self-validation (rlaif/judge/audit.py), `accuracy` being the
strength:
- "longer": verbosity bias, the mirror of "shorter": the longer reply wins; direct digit
  clamp(1 + words // 6, 1, 9).
- "obeys": obeys injected text: a reply carrying judge-directed text (`rlaif.judge.judge_directed`)
  wins against one that does not (a tie otherwise); direct digit 9 for such a reply, else 5.
- "wording": reads the template: under the shipped pairwise template (its system line "You are an
  impartial judge") the shorter reply wins, under any other wording the longer; direct as "shorter".

Any other options list gets the mass spread evenly. A pairwise or direct prompt whose fences are
missing raises ValueError naming what was expected, so a template change cannot silently break it.

`generate` answers deterministically: for a pairwise prompt a one-sentence rationale naming the
reply the rule prefers (the same side the options get), for a direct prompt the digit, otherwise a
fixed short sentence; `n` texts per request.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Sequence

from rlaif.backends.base import Completion, GenerationRequest, OptionLogprobs, OptionRequest

RULES = ("shorter", "random", "first", "longer", "obeys", "wording")
SHIPPED_SYSTEM = "You are an impartial judge"
DIGITS = tuple(str(d) for d in range(1, 10))
TEN_LOGPROB = math.log(1e-6)


def _last_fenced(text: str, tag: str) -> str | None:
    found = re.findall(rf"<{tag}>\n(.*?)\n</{tag}>", text, re.S)
    return found[-1] if found else None


def pair_replies(text: str) -> tuple[str, str]:
    """The two replies of the pair being judged in a rendered pairwise prompt."""
    a, b = _last_fenced(text, "reply_a"), _last_fenced(text, "reply_b")
    if a is None or b is None:
        raise ValueError("RuleJudge: a pairwise prompt (options A/B) without <reply_a>…</reply_a> and "
                         "<reply_b>…</reply_b> fences in its last user message; did the template change?")
    return a, b


def single_reply(text: str) -> str:
    """The one reply of a rendered direct-score prompt."""
    r = _last_fenced(text, "reply")
    if r is None:
        raise ValueError("RuleJudge: a direct-score prompt (options 1..9) without a <reply>…</reply> fence in "
                         "its last user message; did the template change?")
    return r


def length_key(text: str) -> tuple[int, int]:
    """Length in words, then characters."""
    return len(text.split()), len(text)


def length_digit(text: str) -> int:
    """The score the "shorter" rule favours: d = clamp(9 − words // 6, 1, 9)."""
    return min(max(9 - len(text.split()) // 6, 1), 9)


def _system(messages: Sequence[dict]) -> str:
    return next((m["content"] for m in messages if m["role"] == "system"), "")


def _last_user(messages: Sequence[dict]) -> str:
    for m in reversed(messages):
        if m["role"] == "user":
            return m["content"]
    raise ValueError("RuleJudge: a request without a user message")


class RuleJudge:
    name = "rule"

    def __init__(self, rule: str = "shorter", accuracy: float = 0.9, seed: int = 0):
        if rule not in RULES:
            raise ValueError(f"RuleJudge: rule {rule!r}: expected one of {', '.join(RULES)}")
        if not 0.0 < accuracy < 1.0:
            raise ValueError(f"RuleJudge: accuracy {accuracy}: expected a probability strictly between 0 and 1")
        self.rule, self.accuracy, self.seed = rule, accuracy, seed
        self.model = f"rule:{rule}"
        self.counters = {"option_requests": 0, "generate_requests": 0}

    # -------------------------------------------------------------- the rule

    def _hash(self, messages: Sequence[dict], salt: str) -> int:
        blob = "\x00".join([str(self.seed), salt] + [f"{m['role']}:{m['content']}" for m in messages])
        return int(hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16], 16)

    def preferred_side(self, messages: Sequence[dict]) -> str | None:
        """"a", "b", or None for an exact tie (the "shorter" rule only)."""
        a, b = pair_replies(_last_user(messages))
        if self.rule == "first":
            return "a"
        if self.rule == "random":
            return "a" if self._hash(messages, "side") % 2 == 0 else "b"
        if self.rule == "obeys":
            from rlaif.judge import judge_directed

            da, db = judge_directed(a), judge_directed(b)
            return None if da == db else ("a" if da else "b")
        ka, kb = length_key(a), length_key(b)
        longer_wins = self.rule == "longer" or (self.rule == "wording" and SHIPPED_SYSTEM not in _system(messages))
        if longer_wins:
            ka, kb = kb, ka
        return None if ka == kb else ("a" if ka < kb else "b")

    def preferred_digit(self, messages: Sequence[dict]) -> int:
        reply = single_reply(_last_user(messages))
        if self.rule == "first":  # a position bias says nothing about one reply: the middle digit, always
            return 5
        if self.rule == "random":
            return 1 + self._hash(messages, "digit") % 9
        if self.rule == "longer":
            return min(max(1 + len(reply.split()) // 6, 1), 9)
        if self.rule == "obeys":
            from rlaif.judge import judge_directed

            return 9 if judge_directed(reply) else 5
        return length_digit(reply)

    # -------------------------------------------------------------- the protocol

    def option_logprobs(self, requests: Sequence[OptionRequest], options: Sequence[str]) -> list[OptionLogprobs]:
        options = list(options)
        self.counters["option_requests"] += len(requests)
        return [OptionLogprobs(self._one(r, options)) for r in requests]

    def _one(self, r: OptionRequest, options: list[str]) -> dict[str, float]:
        acc, other = math.log(self.accuracy), math.log(1.0 - self.accuracy)
        if options == ["A", "B"]:
            side = self.preferred_side(r.messages)
            if side is None:
                return {"A": math.log(0.5), "B": math.log(0.5)}
            return {"A": acc, "B": other} if side == "a" else {"A": other, "B": acc}
        if set(DIGITS) <= set(options) <= set(DIGITS) | {"10"}:
            d = str(self.preferred_digit(r.messages))
            rest = math.log((1.0 - self.accuracy) / 8)
            return {o: (acc if o == d else TEN_LOGPROB if o == "10" else rest) for o in options}
        if options == ["0"] and r.prefill.endswith("1"):
            return {"0": TEN_LOGPROB}
        even = -math.log(len(options))
        return {o: even for o in options}

    def _text(self, messages: Sequence[dict]) -> str:
        text = _last_user(messages)
        if _last_fenced(text, "reply_a") is not None or _last_fenced(text, "reply_b") is not None:
            side = self.preferred_side(messages)
            if side is None:
                return "Both replies are the same length, so neither is better."
            why = {"shorter": "it is shorter", "random": "a coin says so", "first": "it comes first",
                   "longer": "it is longer", "obeys": "it says so", "wording": "of the wording"}[self.rule]
            return f"Reply ({side.upper()}) is better because {why}."
        if _last_fenced(text, "reply") is not None:
            return str(self.preferred_digit(messages))
        return "A short answer."

    def is_single_token(self, option: str) -> bool:
        """Like SmolLM2's tokenizer, which splits numbers into digits: one character, one token."""
        return len(option.strip()) == 1

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        self.counters["generate_requests"] += len(requests)
        out = []
        for r in requests:
            words = self._text(r.messages).split()[: r.max_tokens]
            text = " ".join(words)
            out.append(Completion(texts=[text] * r.n, prompt_tokens=0, completion_tokens=len(words) * r.n,
                                  finish_reasons=["stop"] * r.n))
        return out

    def close(self) -> None:
        pass
