"""What the judge is shown: conversations and replies cut to length and fenced (data cannot open
or close the template's fences), few-shot comparisons from the constitution, the principles drawn
for a pair or a prompt (seeded by its content alone), and the direct-score requests."""

from __future__ import annotations

import random
import re
from typing import Sequence

from rlaif.backends.base import OptionRequest
from rlaif.constitution import Constitution, Principle
from rlaif.records import request_seed
from rlaif.templates import Template

_FENCE = re.compile(r"<\s*/?\s*(conversation|reply(_[ab])?)\s*>", re.IGNORECASE)


def sanitize(text: str) -> str:
    """Data shown to the judge cannot open or close the fences the template uses."""
    return _FENCE.sub("[tag removed]", text)


def cut(text: str, limit: int, keep: str = "head") -> str:
    """At most `limit` characters: the head of a long text (or its tail), marked where it was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + " [...]" if keep == "head" else "[...] " + text[-limit:]


def conversation_text(messages: list[dict], limit: int) -> str:
    turns = [f"{m['role'].capitalize()}: {m['content'].strip()}" for m in messages if m["role"] != "system"]
    return sanitize(cut("\n\n".join(turns), limit, keep="tail"))


def format_examples(constitution: Constitution, principle: Principle, k: int) -> str:
    """Worked comparisons from the constitution's few-shot exemplars: the revision is the better
    reply. The revision alternates between (A) and (B) so the examples teach no position."""
    blocks = []
    for i, ex in enumerate(constitution.exemplars_for(principle, k)):
        q = constitution.principle(ex.principle).comparison_question if ex.principle else principle.comparison_question
        first, second, answer = ((ex.revision, ex.response, "A") if i % 2 else (ex.response, ex.revision, "B"))
        blocks.append(f"Example {i + 1}:\n<conversation>\nUser: {sanitize(ex.prompt.strip())}\n</conversation>\n\n"
                      f"<reply_a>\n{sanitize(first.strip())}\n</reply_a>\n\n<reply_b>\n{sanitize(second.strip())}\n"
                      f"</reply_b>\n\n{q.strip()}\nThe answer is ({answer})")
    return "".join(b + "\n\n---\n\n" for b in blocks)


def draw_principles(constitution: Constitution, seed: int, key: str, k: int) -> list[Principle]:
    """The principles of one pair: reproducible from (seed, the pair's content) alone, so the same
    pair gets the same principle under every labeler setting."""
    return constitution.sample_principles(random.Random(request_seed("principles", seed, key)), k)


def shown_reply(text: str, limit: int, fenced: bool = True) -> str:
    """A reply as the judge is shown it: cut to `limit`, its fence tags defused unless `fenced` is off."""
    text = cut(text.strip(), limit)
    return sanitize(text) if fenced else text


def direct_score_requests(template: Template, conversations: Sequence[str], responses: Sequence[str],
                          questions: Sequence[str], max_response_chars: int = 1500,
                          fenced: bool = True) -> list[OptionRequest]:
    reqs = []
    for conv, resp, q in zip(conversations, responses, questions):
        v = {"conversation": conv, "response": shown_reply(resp, max_response_chars, fenced), "question": q.strip()}
        reqs.append(OptionRequest(template.render(**v), template.render_prefill(**v)))
    return reqs


__all__ = ["sanitize", "cut", "shown_reply", "conversation_text", "format_examples", "draw_principles", "direct_score_requests"]
