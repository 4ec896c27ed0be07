"""The label stage (RLAIF): every pair of a pairs file judged by the `Judge`, written as preference
records, resumably (through the runner).

What the judge asks and how a soft label is read — options A/B from their log-probabilities, both
orders averaged, CoT clamped, principle ensembles, self-consistency, direct 1–10 scores — is the
judge's (rlaif/judge/). This stage adds what a dataset needs: a stable id per pair (its content,
the constitution, the judge's settings and templates, the judge's engine:model), batches of
similar length, the margin rule, and the records.

Records (TRL conversational preference format plus our fields): `prompt` (messages), `chosen` and
`rejected` (one assistant message each), `p_chosen`, `p_a`, `labels_by_order`, `principle`,
`principles`, `rationale`, `votes`, `within_margin`, `labeler` {engine, model, template, mode, ...}.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import Field

from rlaif.backends.base import independent_requests
from rlaif.config import config_hash
from rlaif.errors import UserError
from rlaif.judge import Judge, JudgeConfig
from rlaif.manifest import read_manifest, update_manifest
from rlaif.records import Reread, record_id, write_jsonl_atomic
from rlaif.runner import OutputLock, StageResult, run_stage
from rlaif.stages.pair_inputs import PairsFile

STAGE = "label"
LABELS = "labels.jsonl"
PREFERENCES = "preferences.jsonl"


class LabelConfig(JudgeConfig):
    """The label stage's block: how the judge asks (JudgeConfig) and which labels are kept."""

    margin: float = Field(0.0, ge=0, lt=0.5)  # |p − 0.5| < margin: "within margin"
    drop_within_margin: bool = False  # leave such pairs out of preferences.jsonl


# ------------------------------------------------------------------ the stage


def label_inputs(pairs: Iterable[dict], judge: Judge) -> list[dict]:
    """One runner input per pair: a stable id and the principles drawn for it. A pair that names
    its `principle` (a constitution's check pair) is judged by that one alone. The id includes the
    judge ("engine:model"), so another judge in the same folder labels the pairs afresh."""
    return list(iter_label_inputs(pairs, judge))


def iter_label_inputs(pairs: Iterable[dict], judge: Judge) -> Iterator[dict]:
    """`label_inputs` a pair at a time."""
    chash, stage_cfg = config_hash(judge.constitution), judge.config.model_dump(mode="json")
    template_ids = judge.template_ids()
    for p in pairs:
        named = p.get("principle")
        if named is not None:
            try:
                judge.principle_ids([named])
            except UserError as e:
                raise UserError(f"pair {p.get('source_line')}: {e}") from None
        principles = [named] if named is not None else judge.pair_principles(p["prompt"], p["a"], p["b"])
        key = record_id(p["prompt"], p["a"], p["b"])
        yield {**p, "id": record_id(STAGE, key, chash, stage_cfg, template_ids, *([named] if named else []),
                                    judge.name),
               "principles": principles}


def judged_length(rec: dict, cfg: JudgeConfig) -> int:
    """Characters of conversation and replies the judge reads for a pair (after the cuts): the
    runner batches pairs of similar length together, which keeps padding small."""
    conv = sum(len(m["content"]) for m in rec["prompt"] if m["role"] != "system")
    return (min(conv, cfg.max_conversation_chars) + min(len(rec["a"]), cfg.max_response_chars)
            + min(len(rec["b"]), cfg.max_response_chars))


def make_process(judge: Judge, margin: float = 0.0):
    """`process(batch) -> preference records`: pure over the batch and the judge."""
    labeler = judge.describe()

    def process(batch: list[dict]) -> list[dict]:
        judged = judge.compare_many([r["prompt"] for r in batch], [r["a"] for r in batch], [r["b"] for r in batch],
                                    principles=[r["principles"] for r in batch], keys=[r["id"] for r in batch])
        out = []
        for rec, j in zip(batch, judged):
            a_wins = j.p_a >= 0.5
            win, lose = (rec["a"], rec["b"]) if a_wins else (rec["b"], rec["a"])
            out.append({
                "id": rec["id"], "prompt": rec["prompt"],
                "chosen": [{"role": "assistant", "content": win}],
                "rejected": [{"role": "assistant", "content": lose}],
                "p_chosen": j.p_a if a_wins else j.p_b,
                "chosen_is": "a" if a_wins else "b", "p_a": j.p_a,
                "labels_by_order": j.labels_by_order,
                "principle": "+".join(j.principles), "principles": j.principles,
                "rationale": j.rationale,
                "votes": j.votes,
                "within_margin": abs(j.p_a - 0.5) < margin,
                "labeler": labeler,
                "given": rec["given"], "source_line": rec["source_line"], "source_id": rec["source_id"],
                **({"human_chosen": rec["human_chosen"]} if "human_chosen" in rec else {}),
            })
        return out

    return process


def label_pairs(pairs: Iterable[dict], judge: Judge, out_dir: str | Path, *, batch_size: int = 8,
                overwrite: bool = False, progress: bool = True, output: str = LABELS) -> StageResult:
    """Label normalised pairs (a list, or a `PairsFile` streamed from disk) into
    `out_dir/labels.jsonl` (resumable, via the runner)."""
    cfg, engine, constitution = judge.config, judge.engine, judge.constitution
    if isinstance(pairs, Reread):
        inputs = Reread(lambda: iter_label_inputs(pairs, judge))
    else:
        inputs = label_inputs(pairs, judge)
    return run_stage(
        STAGE, inputs, make_process(judge, getattr(cfg, "margin", 0.0)), out_dir,
        config={"judge": cfg.model_dump(mode="json"), "templates": judge.template_ids(),
                "constitution": {"name": constitution.name, "version": constitution.version,
                                 "hash": config_hash(constitution)},
                "judge_model": engine.model},
        batch_size=batch_size, output=output, overwrite=overwrite, progress=progress,
        stats=getattr(engine, "stats", None), batch_key=lambda rec: judged_length(rec, cfg),
        fixed_batches=not independent_requests(engine))


def run_label(pairs_path, judge: Judge, out_dir, *, batch_size: int = 8, overwrite: bool = False,
              progress: bool = True) -> dict:
    """`rlaif label`: label a pairs file; write labels.jsonl (all pairs) and preferences.jsonl
    (pairs kept after the margin rule). Returns a summary. The file is streamed, never held: the
    memory it takes grows with the number of pairs by their ids alone. `pairs_path`: a path, or a
    `PairsFile` (checked once, whoever checks it first)."""
    pairs = pairs_path if isinstance(pairs_path, PairsFile) else PairsFile(pairs_path)
    pairs.check()
    cfg = judge.config
    drop = getattr(cfg, "drop_within_margin", False)  # a LabelConfig's rule; a plain JudgeConfig keeps all
    out_dir = Path(out_dir)
    with OutputLock(out_dir):
        result = label_pairs(pairs, judge, out_dir, batch_size=batch_size, overwrite=overwrite, progress=progress)
        kept = within = 0
        ab, ba = array("d"), array("d")  # the two orders' labels, for the flip rate

        def preferences():  # one pass over labels.jsonl, streamed
            nonlocal kept, within
            for r in result.records:
                within += r["within_margin"]
                if r["labels_by_order"]["ba"] is not None:
                    ab.append(r["labels_by_order"]["ab"])
                    ba.append(r["labels_by_order"]["ba"])
                if not (drop and r["within_margin"]):
                    kept += 1
                    yield r

        write_jsonl_atomic(out_dir / PREFERENCES, preferences())
        from rlaif.metrics import order_ties, position_flip_rate

        summary = {"out_dir": str(out_dir), "pairs": result.total, "skipped_inputs": pairs.skipped,
                   "written": result.written, "done_before": result.done_before, "failed": result.failed,
                   "within_margin": within, "preferences": kept, "seconds": round(result.seconds, 1),
                   "position_flip_rate": round(position_flip_rate(ab, ba), 4) if ab else None,
                   "position_order_ties": order_ties(ab, ba) if ab else None}
        entry = read_manifest(out_dir).get("stages", {}).get(STAGE, {})
        update_manifest(out_dir, STAGE, {**entry, "summary": summary, "derived": {"preferences": PREFERENCES}})
    return summary
