"""The pairs people label: read a pairs file (the shapes `rlaif label` accepts) and give every pair
a stable id and the principle's question the page shows.

Each line is one pair: `prompt` + `response_a`/`response_b`, `prompt` + `chosen`/`rejected`, or an
HH-RLHF transcript pair (see `rlaif.stages.pair_inputs.normalize_pairs`). Two optional fields:
`principle` (the id of a principle in the constitution; its comparison question is shown) and
`question` (a question of your own, shown as written). Without either, the principle is drawn the
way the labeler draws it for the same pair and seed, so people and the judge answer the same
question. `pair_id` is a hash of the conversation and the two replies: the same pair read twice is
one pair.
"""

from __future__ import annotations

from pathlib import Path

from rlaif.constitution import Constitution
from rlaif.errors import UserError
from rlaif.records import read_jsonl, record_id
from rlaif.resources import resolve
from rlaif.judge import draw_principles
from rlaif.stages.pair_inputs import normalize_pairs

SAMPLE = "annotate_sample"  # the shipped sample: prompts/annotate_sample.jsonl


def pair_key(prompt: list[dict], a: str, b: str) -> str:
    """The same key the labeler uses for a pair (record_id of prompt, a, b)."""
    return record_id(prompt, a, b)


def load_annotation_pairs(path: str | Path, constitution: Constitution, seed: int = 0) -> list[dict]:
    """Pairs for the page: {pair_id, prompt, a, b, principle, question, source_line, source_id}.
    A bad line is a UserError naming the file and the line. `annotate_sample` names the shipped sample."""
    path = resolve("prompts", path) if not Path(path).exists() and str(path) == SAMPLE else Path(path)
    return annotation_pairs(read_jsonl(path), str(path), constitution, seed)


def annotation_pairs(raw: list[dict], path: str, constitution: Constitution, seed: int = 0) -> list[dict]:
    """The same from records already read (`path` names the source in messages)."""
    pairs, _skipped = normalize_pairs(raw, str(path))
    ids = {q.id for q in constitution.principles}
    out = []
    for p in pairs:
        rec, where = raw[p["source_line"] - 1], f"{path}:{p['source_line']}"
        if p["a"].strip() == "" or p["b"].strip() == "":
            raise UserError(f"{where}: an empty reply; expected two non-empty replies to compare")
        principle, question = rec.get("principle"), rec.get("question")
        if principle is not None and (not isinstance(principle, str) or principle not in ids):
            raise UserError(f"{where}: field principle: {principle!r} is not a principle of constitution "
                            f"{constitution.name} (ids: {', '.join(sorted(ids))})")
        if question is not None and (not isinstance(question, str) or not question.strip()):
            raise UserError(f"{where}: field question: expected non-empty text")
        key = pair_key(p["prompt"], p["a"], p["b"])  # a pair given twice is one pair in the database
        if principle is None and question is None:
            principle = draw_principles(constitution, seed, key, 1)[0].id
        if question is None:
            question = constitution.principle(principle).comparison_question.strip()
        out.append({"pair_id": key, "prompt": p["prompt"], "a": p["a"], "b": p["b"], "principle": principle,
                    "question": question.strip(), "source_line": p["source_line"], "source_id": p["source_id"]})
    return out
