"""Reader for Anthropic's HH-RLHF human preference pairs (Bai et al. 2022), upstream format.

Each line is `{"chosen": TRANSCRIPT, "rejected": TRANSCRIPT}` where a transcript is
`\\n\\nHuman: ...\\n\\nAssistant: ...` and the two share every turn but the last assistant reply. We
split both into turns and return

    {"prompt": [chat messages of the shared prefix], "chosen": last reply the human preferred,
     "rejected": the other last reply, "line": line number}

Pairs whose final replies are identical, whose prefixes differ, or that do not end in an assistant
turn are counted by reason and skipped, never crashed on. A line that is not this format at all
(not JSON, no `chosen`/`rejected` strings) is a UserError naming the file and line.

`load_human_pairs("hub:Anthropic/hh-rlhf[:DATA_DIR[:SPLIT]]")` reads the same data through
`datasets` where a hub is reachable; offline it fails at once with a clear message.
"""

from __future__ import annotations

import os
import re
import socket
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from rlaif.errors import UserError
from rlaif.records import read_jsonl

# the HH-RLHF file the pipeline's evaluation reads when its `human` setting is "auto"
DEFAULT_HUMAN = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-dev.jsonl.gz"

_TURN = re.compile(r"\n\n(Human|Assistant):")
_ROLE = {"Human": "user", "Assistant": "assistant"}


@dataclass
class HumanPairs:
    pairs: list[dict]
    skipped: Counter = field(default_factory=Counter)
    total: int = 0
    source: str = ""


def split_transcript(text: str) -> list[dict] | None:
    """`\\n\\nHuman: a\\n\\nAssistant: b` -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}].
    None when the text does not start with a speaker tag."""
    if not text.startswith("\n\n"):
        text = "\n\n" + text.lstrip("\n")  # a few transcripts lose their leading blank line
    parts = _TURN.split(text)
    if parts[0].strip():  # text before the first speaker tag
        return None
    turns = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        turns.append({"role": _ROLE[speaker], "content": content.strip()})
    return turns or None


def parse_pair(chosen: str, rejected: str) -> tuple[dict | None, str | None]:
    """One upstream pair -> (pair, None) or (None, reason it is skipped)."""
    c, r = split_transcript(chosen), split_transcript(rejected)
    if c is None or r is None:
        return None, "unparseable"
    if c[-1]["role"] != "assistant" or r[-1]["role"] != "assistant":
        return None, "no_final_assistant_turn"
    if c[:-1] != r[:-1]:
        return None, "prefix_mismatch"
    if not any(m["role"] == "user" for m in c[:-1]):
        return None, "no_user_turn"
    if c[-1]["content"] == r[-1]["content"]:
        return None, "identical"
    return {"prompt": c[:-1], "chosen": c[-1]["content"], "rejected": r[-1]["content"]}, None


def pairs_from_rows(rows, source: str) -> HumanPairs:
    out = HumanPairs(pairs=[], source=source)
    for i, row in enumerate(rows, 1):
        out.total += 1
        if not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
            raise UserError(f"{source}:{i}: expected HH-RLHF format: string fields chosen and rejected "
                            "holding full '\\n\\nHuman: ... \\n\\nAssistant: ...' transcripts")
        pair, reason = parse_pair(row["chosen"], row["rejected"])
        if pair is None:
            out.skipped[reason] += 1
            continue
        out.pairs.append({**pair, "line": i})
    if not out.pairs:
        raise UserError(f"{source}: no usable HH-RLHF pairs ({out.total} read; skipped: "
                        f"{dict(out.skipped) or 'none'})")
    return out


def read_hh_rlhf(path: str | Path) -> HumanPairs:
    """Read an upstream `.jsonl` or `.jsonl.gz` file."""
    return pairs_from_rows(read_jsonl(path), str(path))


def _hub_reachable(host: str = "huggingface.co", timeout: float = 5.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def load_hub(spec: str) -> HumanPairs:
    """`hub:Anthropic/hh-rlhf[:DATA_DIR[:SPLIT]]`, e.g. `hub:Anthropic/hh-rlhf:harmless-base:test`."""
    parts = spec.split(":")
    repo = parts[1] if len(parts) > 1 and parts[1] else "Anthropic/hh-rlhf"
    data_dir = parts[2] if len(parts) > 2 and parts[2] else "harmless-base"
    split = parts[3] if len(parts) > 3 and parts[3] else "test"
    hint = ("download the upstream .jsonl.gz file and pass its path to --human instead")
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise UserError(f"{spec}: the Hugging Face hub is switched off here (HF_HUB_OFFLINE); {hint}")
    if not _hub_reachable():
        raise UserError(f"{spec}: cannot reach huggingface.co within 5 s; {hint}")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        import datasets

        ds = datasets.load_dataset(repo, data_dir=data_dir, split=split)
    except Exception as e:  # the hub can fail in many ways; all of them are the user's to fix
        raise UserError(f"{spec}: could not load from the hub ({str(e).splitlines()[0][:160]}); {hint}") from None
    return pairs_from_rows(ds, spec)


def load_human_pairs(spec: str | Path) -> HumanPairs:
    """A path to an upstream file, or `hub:REPO[:DATA_DIR[:SPLIT]]`."""
    if isinstance(spec, str) and spec.startswith("hub:"):
        return load_hub(spec)
    return read_hh_rlhf(spec)
