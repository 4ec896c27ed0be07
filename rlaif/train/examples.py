"""The trainers' examples: preference pairs, prompt–completion records and prompts read from their
records (TRL shapes, conversational or plain; records that must not be trained on are skipped and
counted, and the trainers say so in one console line), and token lists padded into a batch."""

from __future__ import annotations

import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from rlaif.errors import UserError
from rlaif.records import read_jsonl

Messages = list[dict]


def field_messages(value: Any, role: str, where: str, field: str) -> Messages:
    """A record field as chat messages: a string becomes one `role` turn; messages are checked."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise UserError(f"{where}: field {field!r}: expected a string or a list of chat messages "
                    "({role, content}), got " + type(value).__name__)


@dataclass
class Pair:
    """One preference pair. `conversational` says whether to use the chat template."""

    prompt: Messages | str
    chosen: Messages | str
    rejected: Messages | str
    p: float  # probability that `chosen` is better
    margin: float = 0.0
    conversational: bool = True


class UnusablePair(UserError):
    """A well-formed record that must not be trained on; `read_pairs` skips it and counts `reason`."""

    def __init__(self, where: str, reason: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.reason = reason


def parse_pair(rec: dict, where: str) -> Pair:
    """TRL preference shapes: conversational (`prompt` messages, `chosen`/`rejected` assistant
    messages) or plain strings; also implicit-prompt pairs (`chosen`/`rejected` full conversations
    sharing every turn but the last assistant reply, as HH-RLHF has them). `p_chosen` is the soft
    label, 1.0 when absent.

    A completion is assistant text only: a record whose transcripts differ before their last
    assistant turn, or whose completion holds another role's turn, would train the model to write
    that text. It raises `UnusablePair` (a UserError naming the record); `read_pairs` skips such
    records and counts them by reason, as the HH-RLHF reader does with its prefix mismatches."""
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise UserError(f"{where}: missing field {key!r}; expected a preference record with "
                            "prompt, chosen, rejected (and optionally p_chosen)")
    p = rec.get("p_chosen", 1.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise UserError(f"{where}: field 'p_chosen': expected a number in [0, 1], got {p!r}")
    margin = rec.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise UserError(f"{where}: field 'margin': expected a number, got {margin!r}")
    prompt = rec.get("prompt")
    strings = isinstance(rec["chosen"], str) and isinstance(rec["rejected"], str) and (
        prompt is None or isinstance(prompt, str))
    if strings:
        return Pair(prompt or "", rec["chosen"], rec["rejected"], float(p), float(margin), False)
    chosen = field_messages(rec["chosen"], "assistant", where, "chosen")
    rejected = field_messages(rec["rejected"], "assistant", where, "rejected")
    if prompt is None:  # implicit prompt: everything before the last assistant reply
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            raise UnusablePair(where, "no_final_assistant_turn",
                               "chosen and rejected must each end with an assistant turn")
        if chosen[:-1] != rejected[:-1]:
            raise UnusablePair(where, "differ_before_last_assistant_turn",
                               "chosen and rejected differ before their last assistant turn")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        if not prompt:
            raise UserError(f"{where}: no 'prompt' and chosen/rejected share no leading messages")
    else:
        prompt = field_messages(prompt, "user", where, "prompt")
        for key, completion in (("chosen", chosen), ("rejected", rejected)):
            if any(m["role"] != "assistant" for m in completion):
                raise UnusablePair(where, "non_assistant_turn_in_completion",
                                   f"field {key!r} holds a turn that is not the assistant's")
    return Pair(prompt, chosen, rejected, float(p), float(margin), True)


@dataclass
class PromptCompletion:
    """One prompt and its completion (SFT's example; KTO's, with its label)."""

    prompt: Messages | str
    completion: Messages | str
    conversational: bool = True


def parse_prompt_completion(rec: dict, where: str, kind: str = "SFT") -> PromptCompletion:
    """TRL prompt–completion shapes: plain strings, or `prompt` chat messages (a string is one user
    turn) and `completion` assistant messages. Shared by SFT and KTO."""
    for key in ("prompt", "completion"):
        if key not in rec:
            raise UserError(f"{where}: missing field {key!r}; expected a {kind} record with prompt and completion "
                            "(strings, or chat messages and assistant messages)")
    prompt, completion = rec["prompt"], rec["completion"]
    if isinstance(prompt, str) and isinstance(completion, str):
        return PromptCompletion(prompt, completion, False)
    prompt = field_messages(prompt, "user", where, "prompt")
    completion = field_messages(completion, "assistant", where, "completion")
    if any(m["role"] != "assistant" for m in completion):
        raise UnusablePair(where, "non_assistant_turn_in_completion",
                           "field 'completion' holds a turn that is not the assistant's")
    return PromptCompletion(prompt, completion, True)


class Skipped(Counter):
    """Records of a file left out of training, counted by reason (a Counter, as the summaries write
    it), with the number of records read and the line of the first one left out."""

    def __init__(self, path: str | Path = "", read: int = 0):
        super().__init__()
        self.path, self.read, self.first = str(path), read, None

    def add(self, reason: str, line: int) -> None:
        self[reason] += 1
        self.first = line if self.first is None else min(self.first, line)

    def line(self, stage: str) -> str | None:
        """One line for the console: how many records were left out, why, and where to look; None
        when none were."""
        n = sum(self.values())
        if not n:
            return None
        why = "; ".join(f"{count} {reason}" for reason, count in self.most_common())
        where = f", the first at line {self.first}" if self.first is not None else ""
        return f"{stage}: left out {n} of {self.read} records of {self.path} ({why}){where}"

    def announce(self, stage: str, main_process: bool = True) -> None:
        """Print `line` on stderr (once: from the main process), when records were left out."""
        text = self.line(stage)
        if text and main_process:
            print(text, file=sys.stderr, flush=True)


def read_usable(path: str | Path, parse, what: str) -> tuple[list, Skipped]:
    """-> (the records `parse(rec, where)` makes, count of skipped records by reason). A record it
    finds unusable (`UnusablePair`) is skipped and counted; a malformed one is a UserError; a file
    without one usable record too (`what` names them: "preference pairs")."""
    examples: list = []
    rows = read_jsonl(path)
    skipped = Skipped(path, len(rows))
    for i, rec in enumerate(rows, 1):
        try:
            examples.append(parse(rec, f"{path}:{i}"))
        except UnusablePair as e:
            skipped.add(e.reason, i)
    if not examples:
        raise UserError(f"{path}: no usable {what} ({len(rows)} read; skipped: {dict(skipped) or 'none'})")
    return examples, skipped


def read_pairs(path: str | Path) -> tuple[list[Pair], Skipped]:
    """-> (usable pairs, count of skipped records by reason). A malformed record is a UserError;
    a file without one usable pair too."""
    return read_usable(path, parse_pair, "preference pairs")


def read_prompts(path: str | Path) -> list[Messages]:
    """A prompt set (JSONL or text, a path or a shipped name like `red_team`) as chat messages."""
    from rlaif.prompts_io import read_prompts as read_prompt_set

    return [r["prompt"] for r in read_prompt_set(path)]


def pad(seqs: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
    return out


def padded(seqs: Sequence[Sequence[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids and their attention mask (1 on the real tokens)."""
    ids = pad(seqs, value)
    lengths = torch.tensor([len(s) for s in seqs])
    return ids, (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


__all__ = ["Messages", "Pair", "PromptCompletion", "Skipped", "UnusablePair", "field_messages", "parse_pair",
           "parse_prompt_completion", "read_pairs", "read_prompts", "read_usable", "pad", "padded", "pad_id"]
