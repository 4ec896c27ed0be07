"""Reading the critique stage's inputs: response records (`prompt` text or messages, `response`
text, `id` optional) from a list or a JSONL file, checked and given a response id. Every problem
names the source and the line."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from rlaif.errors import UserError
from rlaif.prompts_io import as_messages
from rlaif.records import Reread, iter_jsonl_numbered, record_id


def normalize_responses(records: Sequence[dict], source: str = "responses",
                        lines: Sequence[int] | None = None) -> list[dict]:
    """Check response records (`prompt` text or messages, `response` text; `id` optional) and give
    each a response id; problems name the source and the line (or record number)."""
    return [normalize_response(rec, f"{source}:{lines[i - 1]}" if lines else f"{source}: record {i}")
            for i, rec in enumerate(records, 1)]


def normalize_response(rec, where: str) -> dict:
    if not isinstance(rec, dict):
        raise UserError(f"{where}: expected a JSON object")
    if "prompt" not in rec:
        raise UserError(f"{where}: missing required field prompt")
    if not isinstance(rec.get("response"), str):
        raise UserError(f"{where}: field response: expected a string"
                        + ("" if "response" in rec else " (missing)"))
    messages = as_messages(rec["prompt"], where, require_user=True)
    rid = rec.get("response_id", rec.get("id"))  # records normalised before keep their id
    if rid is not None and not isinstance(rid, str):
        raise UserError(f"{where}: field id: expected a string")
    rid = rid or record_id(messages, rec["response"])
    return {"response_id": rid, "prompt": messages, "response": rec["response"],
            "model": rec.get("model"), "sample": rec.get("sample")}


class ResponsesFile(Reread):
    """Response records from a JSONL file (e.g. the `generate` stage's responses.jsonl), checked and
    normalised afresh on every pass, never held whole; `check()` reads it once (later calls give the
    same count)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count: int | None = None  # records, once checked
        super().__init__(lambda: (normalize_response(rec, f"{self.path}:{n}")
                                  for n, rec in iter_jsonl_numbered(self.path)))

    def check(self) -> int:
        """The number of records; the first bad one, or none at all, is a UserError."""
        if self.count is None:
            n = sum(1 for _ in self)
            if not n:
                raise UserError(f"{self.path}: no records; expected at least one JSON object per line")
            self.count = n
        return self.count


def load_responses(path: str | Path) -> list[dict]:
    """Response records from a JSONL file, as a list."""
    responses = ResponsesFile(path)
    responses.check()
    return list(responses)


__all__ = ["ResponsesFile", "load_responses", "normalize_response", "normalize_responses"]
