"""The judge check: before any labeling, can the judge tell this constitution's check pairs apart?

Each constitution carries unambiguous check pairs (`check_pairs`: a prompt, a better and a worse
reply, optionally the principle to judge them by). The judge labels them through the labeler
itself (`label_pairs`, resumable, `OUT/labels.jsonl`) with the run's LabelerConfig, so the check
measures the very judgement the labeling will use. For pair i, with p_i = p(better ≻ worse):

    accuracy = mean_i s_i,   s_i = 1 if p_i > 0.5, 0.5 if p_i = 0.5, 0 otherwise
    CI95     = percentile bootstrap of that mean over the pairs (rlaif.metrics)

A judge whose CI includes 0.5 is *at chance*: its labels carry no signal, and the run says so
first. One whose CI lies wholly below 0.5 is *below chance*: it prefers the worse reply. Which side
shows the better reply is a seeded coin per pair, so a judge that always picks the first-shown reply
cannot pass when debiasing is off. Results go to `OUT/judge_check.json` (atomic).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from rlaif.constitution import Constitution
from rlaif.errors import UserError
from rlaif.eval.labeler_report import compute_metrics, p_human
from rlaif.records import record_id, write_atomic
from rlaif.runner import OutputLock
from rlaif.stages.labeler import LABELS, LabelerConfig, label_pairs

RESULT = "judge_check.json"
FLAT_MARGIN = 0.05  # a passing judge whose mean p(right) is below 0.5 + this gets a caution in its line


def check_pairs_as_label_inputs(constitution: Constitution, *, blind_seed: int | None = None) -> list[dict]:
    """The constitution's check pairs as normalised labeler pairs: a = better, b = worse, the prompt
    as one user message, `principle` where the pair names one. `human_chosen` says which side holds
    the better reply (the labeler carries it into its records). With `blind_seed`, a seeded coin per
    pair puts the better reply on side b instead for about half of them."""
    out = []
    for i, cp in enumerate(constitution.check_pairs):
        flip = blind_seed is not None and random.Random(int(record_id("check", blind_seed, i), 16)).random() < 0.5
        a, b = (cp.worse, cp.better) if flip else (cp.better, cp.worse)
        pair = {"prompt": [{"role": "user", "content": cp.prompt}], "a": a, "b": b, "given": "check_pair",
                "source_line": i + 1, "source_id": f"check_pairs.{i}", "human_chosen": "b" if flip else "a"}
        if cp.principle is not None:
            pair["principle"] = cp.principle
        out.append(pair)
    return out


def judge_at_chance(result: dict) -> bool:
    """True when the accuracy's 95 % CI includes 0.5."""
    if result.get("status") == "skipped":
        return False
    lo, hi = result["accuracy_ci95"]
    return lo <= 0.5 <= hi


def judge_verdict(result: dict) -> str:
    """How a run should treat its judge: "alarm" (at or below chance: the labels carry no signal,
    or the wrong one), "warn" (passes, but its labels are nearly flat; or no check pairs to tell),
    "ok"."""
    status = result.get("status")
    if status in ("at_chance", "below_chance"):
        return "alarm"
    if status == "skipped" or result["mean_p_right"] - 0.5 < FLAT_MARGIN:
        return "warn"
    return "ok"


def _status(ci: tuple[float, float]) -> str:
    lo, hi = ci
    if lo <= 0.5 <= hi:
        return "at_chance"
    return "below_chance" if hi < 0.5 else "ok"


def judge_check_line(result: dict) -> str:
    """The one line the CLI and the pipeline print."""
    if result["status"] == "skipped":
        return result["message"]
    model, name, n = result["judge"]["model"], result["constitution"]["name"], result["pairs"]
    lo, hi = result["accuracy_ci95"]
    figures = (f"accuracy {result['accuracy']:.2f}, 95 % CI {lo:.2f}–{hi:.2f}, "
               f"mean p(right) {result['mean_p_right']:.2f}")
    if result["status"] == "at_chance":
        return (f"judge check: {model} is at chance on {name}'s {n} check pairs ({figures}): "
                "the labels it gives carry no signal")
    if result["status"] == "below_chance":
        return (f"judge check: {model} prefers the worse reply on {name}'s {n} check pairs ({figures}): "
                "the labels it gives point the wrong way")
    line = f"judge check: {model} passes {name}'s {n} check pairs ({figures})"
    if result["mean_p_right"] - 0.5 < FLAT_MARGIN:
        line += (f", but its labels are nearly flat (mean p(right) within {FLAT_MARGIN} of 0.5), so they weigh "
                 "little in soft-label training")
    return line


def validate_threshold(threshold: float) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.5 < threshold <= 1:
        raise UserError(f"required judge accuracy {threshold!r}: expected a number in (0.5, 1] (0.5 is chance)")
    return float(threshold)


def require_accuracy(result: dict, threshold: float) -> None:
    """Stop (UserError, exit 2) when the judge's check accuracy is below `threshold`."""
    threshold = validate_threshold(threshold)
    if result["status"] == "skipped":
        raise UserError(f"judge check: a judge accuracy of {threshold:g} is required, but constitution "
                        f"{result['constitution']['name']} has no check pairs to measure it on")
    if result["accuracy"] < threshold:
        raise UserError(f"judge check: {result['judge']['model']} scored {result['accuracy']:.2f} on "
                        f"{result['constitution']['name']}'s {result['pairs']} check pairs, below the required "
                        f"{threshold:g}; use a stronger judge or lower the requirement")


def run_judge_check(engine, constitution: Constitution, out_dir, cfg: LabelerConfig | None = None, *,
                    batch_size: int = 16, overwrite: bool = False, progress: bool = True) -> dict:
    """Label the constitution's check pairs with `engine` and measure how often it picks the better
    reply. Writes `OUT/labels.jsonl` and `OUT/judge_check.json`; returns the result dict."""
    cfg = cfg or LabelerConfig()
    out_dir = Path(out_dir)
    base = {"judge": {"engine": engine.name, "model": engine.model},
            "constitution": {"name": constitution.name, "version": constitution.version}}
    if not constitution.check_pairs:
        return {"status": "skipped", "pairs": 0, **base,
                "message": (f"judge check skipped: constitution {constitution.name} carries no check pairs, so "
                            f"nothing shows whether {engine.model} can judge it")}
    pairs = check_pairs_as_label_inputs(constitution, blind_seed=cfg.seed)
    with OutputLock(out_dir):
        started = time.perf_counter()
        labeled = label_pairs(pairs, constitution, engine, cfg, out_dir, batch_size=batch_size,
                              overwrite=overwrite, progress=progress, output=LABELS)
        seconds = time.perf_counter() - started
        records = labeled.records
        if len(records) < len(pairs):
            raise UserError(f"judge check: {len(pairs) - len(records)} of {len(pairs)} check pairs failed to label "
                            f"(see {out_dir / 'failures.jsonl'}); run again to retry them")
        m = compute_metrics(records, seed=cfg.seed)  # accuracy and its bootstrap CI, flips, length bias
        result = {
            "status": _status(m["accuracy_ci95"]), "pairs": len(records),
            "accuracy": m["accuracy"], "accuracy_ci95": m["accuracy_ci95"],
            "mean_p_right": sum(p_human(r) for r in records) / len(records),
            "position_flip_rate": m["position_flip_rate"],
            "prefers_longer_rate": m["prefers_longer_rate"],
            "better_is_longer_rate": m["human_prefers_longer_rate"],
            "seconds_per_pair": _seconds_per_pair(out_dir, labeled.written, seconds),
            **base,
            "labeler": {"mode": cfg.mode, "debias": cfg.debias and cfg.mode == "pairwise", "cot": cfg.cot,
                        "few_shot": cfg.few_shot, "seed": cfg.seed},
        }
        result["message"] = judge_check_line(result)
        write_atomic(out_dir / RESULT, json.dumps(result, indent=2) + "\n")
    return result


def _seconds_per_pair(out_dir: Path, written: int, seconds: float) -> float | None:
    """This run's time per newly labeled pair; when every pair was labeled before, the earlier figure."""
    if written:
        return seconds / written
    try:
        return json.loads((out_dir / RESULT).read_text()).get("seconds_per_pair")
    except (OSError, json.JSONDecodeError):
        return None
