"""Reading prompt sets: JSONL with a `prompt` (a string or chat messages), or plain text, one
prompt per line. Every problem names the file and the line. `held_out_prompts`: the evaluation's
prompts of a pipeline, never one it trains on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from rlaif.errors import UserError
from rlaif.records import record_id
from rlaif.resources import resolve

_ROLES = {"system", "user", "assistant"}


def as_messages(prompt, where: str, require_user: bool = False) -> list[dict]:
    """A prompt as chat messages: a string becomes one user turn; messages are checked (and, with
    `require_user`, must include a user turn). Every stage that reads prompts goes through here."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise UserError(f"{where}: empty prompt; expected text")
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and prompt:
        for i, m in enumerate(prompt):
            if not (isinstance(m, dict) and m.get("role") in _ROLES and isinstance(m.get("content"), str)):
                raise UserError(f"{where}: prompt message {i}: expected "
                                "{\"role\": system|user|assistant, \"content\": text}")
        if require_user and not any(m["role"] == "user" for m in prompt):
            raise UserError(f"{where}: field prompt: expected at least one user message")
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise UserError(f"{where}: field prompt: expected a string or a non-empty list of chat messages")


def read_prompts(name_or_path: str | Path) -> list[dict]:
    """Records `{"id", "prompt": messages, "meta": {other fields}}` in file order."""
    return list(iter_prompts(name_or_path))


def iter_prompts(name_or_path: str | Path) -> Iterator[dict]:
    """`read_prompts` a line at a time (a file of any size in constant memory); the same errors,
    an empty file included."""
    path = resolve("prompts", name_or_path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; expected a prompt file (.jsonl or .txt)")
    is_jsonl = None  # decided by the first line that is not blank
    try:
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                if is_jsonl is None:
                    is_jsonl = path.suffix in (".jsonl", ".json") or line.lstrip().startswith("{")
                yield _prompt_record(line, f"{path}:{lineno}", lineno, is_jsonl)
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte offset {e.start}); expected a UTF-8 prompt file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if is_jsonl is None:
        raise UserError(f"{path}: no prompts; expected JSONL with a 'prompt' field or one prompt per line")


def held_out_prompts(cfg, source: str = "pipeline", stage=None) -> list[dict]:
    """The evaluation's held-out prompts: never one of the prompts the policy was trained on.
    `cfg`: a pipeline's config (`PipelineConfig`; its `prompts` and `stages.evaluate` are read).
    `stage`: the block saying how many and from where (`prompts`, `policy_prompts`); default the
    evaluate stage's (`rounds.eval` for the iterative rounds)."""
    stage = stage or cfg.stages.evaluate
    field = "rounds.eval" if stage is not cfg.stages.evaluate else "stages.evaluate"
    training = read_prompts(cfg.prompts.file)[: cfg.prompts.limit]
    seen = {record_id(p["prompt"]) for p in training}
    if stage.prompts:
        pool = [p for p in read_prompts(stage.prompts) if record_id(p["prompt"]) not in seen]
        where = f"{stage.prompts} (less any prompt that is also a training prompt)"
    else:
        if cfg.prompts.limit is None:
            raise UserError(f"{source}: {field} needs held-out prompts, but prompts.limit is unset, so "
                            f"every prompt of {cfg.prompts.file} is a training prompt; set prompts.limit or "
                            f"{field}.prompts (a prompt file of its own)")
        pool = [p for p in read_prompts(cfg.prompts.file)[cfg.prompts.limit:] if record_id(p["prompt"]) not in seen]
        where = f"{cfg.prompts.file} after its first {cfg.prompts.limit} (training) prompts"
    if len(pool) < stage.policy_prompts:
        raise UserError(f"{source}: {field}.policy_prompts is {stage.policy_prompts}, but only {len(pool)} "
                        f"held-out prompts are left in {where}; lower it, lower prompts.limit, or set "
                        f"{field}.prompts")
    return pool[: stage.policy_prompts]


def _prompt_record(line: str, where: str, lineno: int, is_jsonl: bool) -> dict:
    if is_jsonl:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: invalid JSON ({e.msg} at column {e.colno}); "
                            "expected one JSON object per line") from None
        if not isinstance(obj, dict) or "prompt" not in obj:
            raise UserError(f"{where}: expected a JSON object with a 'prompt' field")
        messages = as_messages(obj["prompt"], where)
        meta = {k: v for k, v in obj.items() if k not in ("prompt", "id")}
    else:
        messages, meta = as_messages(line.strip(), where), {}
    return {"id": record_id("prompt", messages), "prompt": messages, "meta": meta, "line": lineno}
