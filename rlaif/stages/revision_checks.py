"""Cleaning a critique or revision the model wrote, and telling when it is degenerate: the labels
our own templates invite are stripped, text past the point where the model starts writing the
next section of the prompt format is cut, and a revision that is empty, unchanged, or merely
repeats the request, the critique or the user's prompt is flagged (never silently kept)."""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Sequence

from rlaif.constitution import Principle
from rlaif.templates import Template

_LABEL = (r"(?:revised|rewritten|new|improved|updated|final)?\s*(?:assistant\s*)?"
          r"(?:revision|reply|response|answer|critique|assistant)")
_PREFIX = re.compile(
    rf"^\s*(?:[*_#>]+\s*)?(?:here(?: is|'s) (?:the |a |my |an )?[^:\n]{{0,40}}:|{_LABEL}\s*(?:\d+\s*)?[:\-–]"
    rf")\s*(?:[*_]+\s*)?", re.IGNORECASE)
# a line where the model starts writing the next section of our prompt format instead of stopping
_NEXT = {
    "critique": re.compile(r"\n\s*[*_#]*\s*(?:revision request|revision|revised (?:reply|response)|"
                           r"critique request|user|example \d+)\s*[*_]*\s*:", re.IGNORECASE),
    "revision": re.compile(r"\n\s*[*_#]*\s*(?:critique request|critique|revision request|user|"
                           r"example \d+)\s*[*_]*\s*:", re.IGNORECASE),
}


# generation stops where the model starts writing the next section of the prompt format itself
STOPS = {
    "critique": ["\nRevision request:", "\nRevision:", "\nCritique request:", "\nUser:", "\n---"],
    "revision": ["\nCritique request:", "\nCritique:", "\nRevision request:", "\nUser:", "\n---"],
}


def clean_output(text: str, kind: str) -> str:
    """Strip the labels our own templates invite ("Revision:", "Here is the revised reply:"),
    cut where the model starts writing the next section of the prompt format, drop wrapping quotes."""
    text = text.strip()
    m = _NEXT[kind].search("\n" + text)
    if m:
        text = ("\n" + text)[:m.start()].strip()
    for _ in range(3):  # "Revision: Revised reply: ..." happens
        stripped = _PREFIX.sub("", text, count=1).strip()
        if stripped == text:
            break
        text = stripped
    text = text.split("\n---", 1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”":
        text = text[1:-1].strip()
    if len(text) >= 2 and text[0] == "“" and text[-1] == "”":
        text = text[1:-1].strip()
    return text


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", text.lower())).strip()


def _similar(a: str, b: str, threshold: float) -> bool:
    """a merely repeats b: nearly the same characters (ratio >= threshold), or (for 4+ words) at
    least `threshold` of a's words copied in order from b, so a fragment of b counts too."""
    wa, wb = a.split(), b.split()
    if not wa or not wb:
        return False
    if wa == wb:
        return True
    chars = SequenceMatcher(None, a, b, autojunk=False)
    if chars.real_quick_ratio() >= threshold and chars.ratio() >= threshold:
        return True
    if len(wa) < 4:
        return False
    copied = sum(m.size for m in SequenceMatcher(None, wa, wb, autojunk=False).get_matching_blocks())
    return copied / len(wa) >= threshold


def template_lines(template: Template) -> list[str]:
    """The fixed text of a template (placeholders cut out), line by line: what a model echoes
    when it repeats the request instead of answering it."""
    out = []
    for m in template.messages:
        for piece in re.split(r"\{[a-z_]+\}", m.content):
            out += [ln.strip() for ln in piece.splitlines() if len(ln.split()) >= 2]
    return out


def revision_flags(revision: str, *, before: str, original: str, critique: str, principle: Principle,
                   prompt: str, threshold: float = 0.8, template_text: Sequence[str] = ()) -> list[str]:
    """Why a revision is unusable ([] when it is fine). `template_text`: the revision template's
    fixed lines; echoing one of them counts as repeating the request."""
    r = _norm(revision)
    if not r:
        return ["empty"]
    flags = []
    if r == _norm(original):
        flags.append("identical_to_original")
    elif r == _norm(before):
        flags.append("unchanged")
    requests = [principle.revision_request, principle.critique_request, *template_text]
    if any(_similar(r, _norm(t), threshold) for t in requests):
        flags.append("repeats_request")
    if _similar(r, _norm(critique), threshold):
        flags.append("repeats_critique")
    if _similar(r, _norm(prompt), threshold):
        flags.append("repeats_prompt")
    return flags


def critique_flags(critique: str, principle: Principle, threshold: float = 0.8) -> list[str]:
    c = _norm(critique)
    if not c:
        return ["empty"]
    if any(_similar(c, _norm(t), threshold) for t in (principle.critique_request, principle.revision_request)):
        return ["repeats_request"]
    return []


__all__ = ["STOPS", "clean_output", "critique_flags", "revision_flags", "template_lines"]
