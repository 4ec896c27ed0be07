"""Pair files for the labeler: the accepted record shapes, normalised to
`{"prompt": messages, "a", "b", "given", "source_line", "source_id"}`, as a list (`load_pairs`,
`normalize_pairs`) or streamed from disk on every pass (`PairsFile`)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

from rlaif.errors import UserError
from rlaif.prompts_io import as_messages
from rlaif.records import Reread, iter_jsonl, read_jsonl


def _reply(value, field: str, where: str) -> str:
    """A reply given as text, or as a list holding one assistant message (TRL format)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict) \
            and isinstance(value[0].get("content"), str):
        return value[0]["content"]
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise UserError(f"{where}: field {field}: expected a string or a list with one assistant message")


def normalize_pairs(records: Iterable[dict], source: str = "pairs") -> tuple[list[dict], dict]:
    """Pair records -> {"prompt": messages, "a": text, "b": text, "source": {...}}.

    Accepted shapes, per record:
      - `prompt` + `response_a`/`response_b`: an unordered pair;
      - `prompt` + `chosen`/`rejected` (strings or one-message lists, TRL): an ordered pair, a = chosen;
      - HH-RLHF: `chosen`/`rejected` full "\\n\\nHuman: ...\\n\\nAssistant: ..." transcripts, no `prompt`.
    HH pairs that are identical or do not share a prefix are skipped (counted in `skipped`)."""
    skipped: dict = {}
    out = list(iter_pairs(records, source, skipped))
    if not out:
        raise UserError(f"{source}: no usable pairs (skipped: {skipped or 'none'})")
    return out, skipped


def iter_pairs(records: Iterable[dict], source: str, skipped: dict) -> Iterator[dict]:
    """`normalize_pairs` a record at a time; skipped HH pairs are counted into `skipped`."""
    from rlaif.hh_rlhf import parse_pair

    for i, rec in enumerate(records, 1):
        where = f"{source}:{i}"
        if "response_a" in rec or "response_b" in rec:
            if "prompt" not in rec:
                raise UserError(f"{where}: missing required field prompt")
            a, b = _reply(rec.get("response_a"), "response_a", where), _reply(rec.get("response_b"), "response_b", where)
            prompt, given = as_messages(rec["prompt"], where), "unordered"
        elif "chosen" in rec and "rejected" in rec:
            if "prompt" in rec:
                prompt = as_messages(rec["prompt"], where)
                a, b = _reply(rec["chosen"], "chosen", where), _reply(rec["rejected"], "rejected", where)
                given = "chosen_rejected"
            elif isinstance(rec["chosen"], str) and isinstance(rec["rejected"], str):
                pair, reason = parse_pair(rec["chosen"], rec["rejected"])
                if pair is None:
                    skipped[reason] = skipped.get(reason, 0) + 1
                    continue
                prompt, a, b, given = pair["prompt"], pair["chosen"], pair["rejected"], "hh_rlhf"
            else:
                raise UserError(f"{where}: fields chosen/rejected without prompt: expected HH-RLHF "
                                "transcripts ('\\n\\nHuman: ...\\n\\nAssistant: ...')")
        else:
            raise UserError(f"{where}: expected fields prompt + response_a/response_b, prompt + "
                            "chosen/rejected, or HH-RLHF chosen/rejected transcripts")
        if not any(m["role"] == "user" for m in prompt):
            raise UserError(f"{where}: field prompt: expected at least one user message")
        yield {"prompt": prompt, "a": a, "b": b, "given": given, "source_line": i,
               "source_id": rec.get("id") if isinstance(rec.get("id"), str) else None}


def load_pairs(path: str | Path) -> tuple[list[dict], dict]:
    return normalize_pairs(read_jsonl(path), str(path))


class PairsFile(Reread):
    """A pairs file normalised afresh on every pass, never held whole (`rlaif label` over 1M pairs).
    `check()` reads it once (later calls give the same count) before any model loads: the first bad
    line is the error `load_pairs` gives, and a file without usable pairs is refused; `skipped`
    counts the last full pass."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.skipped: dict = {}
        self.count: int | None = None  # usable pairs, once checked
        super().__init__(self._pass)

    def _pass(self) -> Iterator[dict]:
        skipped: dict = {}
        yield from iter_pairs(iter_jsonl(self.path), str(self.path), skipped)
        self.skipped = skipped

    def check(self) -> int:
        """The number of usable pairs; a bad line, an empty file or no usable pair is a UserError."""
        if self.count is not None:
            return self.count
        if not any(True for _ in iter_jsonl(self.path)):
            raise UserError(f"{self.path}: no records; expected at least one JSON object per line")
        n = sum(1 for _ in self)
        if not n:
            raise UserError(f"{self.path}: no usable pairs (skipped: {self.skipped or 'none'})")
        self.count = n
        return n


__all__ = ["normalize_pairs", "iter_pairs", "load_pairs", "PairsFile"]
