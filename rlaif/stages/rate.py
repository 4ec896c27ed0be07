"""The rate stage (UltraFeedback-style AI feedback): K completions per prompt, each rated 1–10 by
the judge on several aspects, then binarised into preference pairs and ranked into rankings.

UltraFeedback (Cui et al. 2023) had GPT-4 rate four completions per instruction on four aspects;
Zephyr and Tulu 2 train on its binarised form (the best completion by mean rating as chosen, a
random one of the others as rejected). Here the aspects are principles of the constitution (by
default all of them) and a rating is the judge's probability-weighted score, read from the score
tokens' probabilities as direct RLAIF reads it:

    rating_a(y) = Σ_k k·p(k | prompt, y, aspect a),  k = 1…10
    mean(y)     = (1/A)·Σ_a rating_a(y)

Outputs, in the stage's folder:
- `ratings.jsonl` — per prompt: its completions, each with the rating and the 1–10 distribution
  per aspect and the mean (resumable, through the runner);
- `preferences.jsonl` — the binarised pairs: chosen = the best by mean rating (the first on a
  tie), rejected = one of the others drawn from (seed, the record's id), as UltraFeedback's
  binarised set draws it; a draw whose mean equals the best's carries no preference and is left
  out (`ties` in the summary). A pair keeps its ratings (`score_chosen`, `score_rejected`, on the
  1–10 scale), `margin` = their gap over 9 (the gap of the judge's [0, 1] values) and the soft
  label the label stage's direct mode gives two scores, p_chosen = ½(1 + margin);
- `rankings.jsonl` — per prompt, every completion best first (`ranked`, the k-wise reward model's
  input for `rlaif train-rm`), by mean rating or, with `rank_by: pairwise`, by the judge's soft
  pairwise labels of all pairs in the group (each reply's mean p of beating the others, both orders
  when debiasing); a group whose scores are all equal says nothing about order and is left out.

Input: JSONL with `prompt` and `completions` (strings, or UltraFeedback's {"response": …}), or one
reply per record (`prompt`, `response`, optional `prompt_id`: `rlaif generate` and the responses
stage write these), grouped by prompt.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

from pydantic import Field

from rlaif.config import Strict, config_hash
from rlaif.errors import UserError
from rlaif.judge import Judge, pair_label_from_scores
from rlaif.manifest import read_manifest, update_manifest
from rlaif.prompts_io import as_messages
from rlaif.records import read_jsonl, record_id, request_seed, write_jsonl_atomic
from rlaif.runner import OutputLock, run_stage

STAGE = "rate"
RATINGS = "ratings.jsonl"
PREFERENCES = "preferences.jsonl"
RANKINGS = "rankings.jsonl"


class RateConfig(Strict):
    aspects: list[str] | None = Field(None, min_length=1)  # principle ids; None: every principle of the constitution
    rank_by: Literal["ratings", "pairwise"] = "ratings"  # what orders rankings.jsonl
    seed: int = 0  # the draw of each rejected completion


# ------------------------------------------------------------------ inputs


def read_groups(path: str | Path) -> tuple[list[dict], int]:
    """-> (groups {prompt (messages), completions, source_line}, groups left out for fewer than two
    distinct completions). A malformed record is a UserError naming its line and field."""
    groups: dict[str, dict] = {}
    for i, rec in enumerate(read_jsonl(path), 1):
        where = f"{path}:{i}"
        if not isinstance(rec, dict) or "prompt" not in rec:
            raise UserError(f"{where}: missing field 'prompt'; expected prompt + completions (a list), or "
                            "prompt + response (one reply per record)")
        prompt = as_messages(rec["prompt"], where)
        if "completions" in rec:
            items = rec["completions"]
            if not isinstance(items, list):
                raise UserError(f"{where}: field 'completions': expected a list of strings or of "
                                "{\"response\": text}, got " + type(items).__name__)
            texts = []
            for k, c in enumerate(items):
                text = c.get("response") if isinstance(c, dict) else c
                if not isinstance(text, str):
                    raise UserError(f"{where}: field 'completions[{k}]': expected a string or "
                                    "{\"response\": text}")
                texts.append(text)
            key = f"line {i}"
        elif isinstance(rec.get("response"), str):
            texts = [rec["response"]]
            key = str(rec.get("prompt_id") or record_id(prompt))
        else:
            raise UserError(f"{where}: expected field 'completions' (a list) or 'response' (a string)")
        group = groups.setdefault(key, {"prompt": prompt, "completions": [], "source_line": i})
        group["completions"] += [t for t in texts if t not in group["completions"]]  # distinct, in order
    kept = [g for g in groups.values() if len(g["completions"]) >= 2]
    return kept, len(groups) - len(kept)


def rate_inputs(groups: list[dict], judge: Judge, cfg: RateConfig) -> list[dict]:
    """One runner input per group: its id hashes the prompt, completions, aspects, the judge's
    settings and templates, the constitution and the judge (engine:model)."""
    aspects = aspects_of(judge, cfg)
    chash, jcfg, templates = config_hash(judge.constitution), judge.config.model_dump(mode="json"), judge.template_ids()
    return [{**g, "aspects": aspects,
             "id": record_id(STAGE, g["prompt"], g["completions"], aspects, cfg.rank_by, chash, jcfg, templates,
                             judge.name)} for g in groups]


def aspects_of(judge: Judge, cfg: RateConfig) -> list[str]:
    if cfg.aspects is None:
        return [q.id for q in judge.constitution.principles]
    try:
        return judge.principle_ids(cfg.aspects)
    except UserError as e:
        raise UserError(f"aspects: {e}") from None


# ------------------------------------------------------------------ the stage


def make_process(judge: Judge, cfg: RateConfig):
    """`process(batch) -> rating records`: every completion of every group scored on every aspect
    in one batch of engine calls (and, for `rank_by: pairwise`, every pair of each group compared)."""
    labeler = judge.describe()

    def process(batch: list[dict]) -> list[dict]:
        prompts = [g["prompt"] for g in batch for _ in g["completions"]]
        replies = [c for g in batch for c in g["completions"]]
        scores = iter(judge.score_many(prompts, replies, principles=[g["aspects"] for g in batch
                                                                    for _ in g["completions"]]))
        wins = judge.group_rewards_many([g["prompt"] for g in batch], [g["completions"] for g in batch],
                                        mode="pairwise") if cfg.rank_by == "pairwise" else None
        out = []
        for gi, g in enumerate(batch):
            completions = []
            for k, text in enumerate(g["completions"]):
                s = next(scores)
                ratings = {a: 1.0 + 9.0 * v for a, v in zip(s.principles, s.scores)}
                completions.append({"response": text, "ratings": ratings,
                                    "distributions": dict(zip(s.principles, s.distributions)),
                                    "mean_rating": sum(ratings.values()) / len(ratings),
                                    **({"pairwise_win": wins[gi][k]} if wins is not None else {})})
            out.append({"id": g["id"], "prompt": g["prompt"], "aspects": g["aspects"], "completions": completions,
                        "labeler": labeler, "source_line": g["source_line"]})
        return out

    return process


def binarise(rec: dict, seed: int) -> dict | None:
    """UltraFeedback's binarisation of one rating record: the best by mean rating against one of
    the others drawn from (seed, id); None when the draw ties the best."""
    comps = rec["completions"]
    best = max(range(len(comps)), key=lambda k: comps[k]["mean_rating"])
    rejected = random.Random(request_seed(seed, rec["id"])).choice([k for k in range(len(comps)) if k != best])
    hi, lo = comps[best]["mean_rating"], comps[rejected]["mean_rating"]
    if hi == lo:
        return None
    margin = (hi - lo) / 9.0
    return {"id": record_id("binarised", rec["id"], seed), "prompt": rec["prompt"],
            "chosen": [{"role": "assistant", "content": comps[best]["response"]}],
            "rejected": [{"role": "assistant", "content": comps[rejected]["response"]}],
            "p_chosen": pair_label_from_scores((hi - 1) / 9, (lo - 1) / 9), "score_chosen": hi, "score_rejected": lo,
            "margin": margin, "rating_id": rec["id"], "labeler": rec["labeler"]}


def ranking(rec: dict, rank_by: str = "ratings") -> dict | None:
    """Every completion of a rating record, best first (by mean rating, or by pairwise wins); None
    when all its scores are equal. Equal scores keep their input order."""
    key = "pairwise_win" if rank_by == "pairwise" else "mean_rating"
    comps = rec["completions"]
    if len({c[key] for c in comps}) == 1:
        return None
    order = sorted(range(len(comps)), key=lambda k: -comps[k][key])
    return {"id": record_id("ranking", rec["id"], key), "prompt": rec["prompt"],
            "ranked": [comps[k]["response"] for k in order], "scores": [comps[k][key] for k in order],
            "ranked_by": key, "rating_id": rec["id"], "labeler": rec["labeler"]}


def run_rate(completions_path, judge: Judge, out_dir, cfg: RateConfig | None = None, *, batch_size: int = 4,
             overwrite: bool = False, progress: bool = True) -> dict:
    """`rlaif rate`: rate a completions file into out_dir (ratings.jsonl resumably, then
    preferences.jsonl and rankings.jsonl from it). Returns a summary."""
    cfg = cfg or RateConfig()
    groups, too_few = read_groups(completions_path)
    if not groups:
        raise UserError(f"{completions_path}: no prompt with two or more distinct completions to rate")
    inputs = rate_inputs(groups, judge, cfg)
    out_dir = Path(out_dir)
    with OutputLock(out_dir):
        result = run_stage(STAGE, inputs, make_process(judge, cfg), out_dir,
                           config={"rate": cfg.model_dump(mode="json"), "judge": judge.config.model_dump(mode="json"),
                                   "templates": judge.template_ids(), "judge_model": judge.engine.model,
                                   "constitution": {"name": judge.constitution.name,
                                                    "version": judge.constitution.version}},
                           batch_size=batch_size, output=RATINGS, overwrite=overwrite, progress=progress,
                           stats=getattr(judge.engine, "stats", None))
        records = list(result.records)
        prefs = [p for p in (binarise(r, cfg.seed) for r in records) if p is not None]
        ranks = [r for r in (ranking(r, cfg.rank_by) for r in records) if r is not None]
        write_jsonl_atomic(out_dir / PREFERENCES, prefs)
        write_jsonl_atomic(out_dir / RANKINGS, ranks)
        summary = {"out_dir": str(out_dir), "prompts": len(groups), "too_few_completions": too_few,
                   "completions": sum(len(g["completions"]) for g in groups), "aspects": inputs[0]["aspects"],
                   "written": result.written, "done_before": result.done_before, "failed": result.failed,
                   "preferences": len(prefs), "ties": len(records) - len(prefs), "rankings": len(ranks),
                   "ranked_by": cfg.rank_by, "seconds": round(result.seconds, 1)}
        entry = read_manifest(out_dir).get("stages", {}).get(STAGE, {})
        update_manifest(out_dir, STAGE, {**entry, "summary": summary,
                                         "derived": {"preferences": PREFERENCES, "rankings": RANKINGS}})
    return summary
