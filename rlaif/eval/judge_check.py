"""`rlaif judge-check`: the judge check (rlaif/judge/check.py says what it measures) run through
the label stage, so the check measures the very judgement the labeling will use: the labels go
to `OUT/labels.jsonl` (resumable) and the result to `OUT/judge_check.json` (atomic). The words a
run prints and the verdict it acts on come from `rlaif.judge`."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rlaif.errors import UserError
from rlaif.eval.labeler_report import p_human
from rlaif.judge import Judge, check_pairs, check_result, skipped_result
from rlaif.records import write_atomic
from rlaif.runner import OutputLock
from rlaif.stages.labeler import LABELS, label_pairs

RESULT = "judge_check.json"


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


def run_judge_check(judge: Judge, out_dir, *, batch_size: int = 16, overwrite: bool = False,
                    progress: bool = True) -> dict:
    """Label the constitution's check pairs with `judge` and measure how often it picks the better
    reply. Writes `OUT/labels.jsonl` and `OUT/judge_check.json`; returns the result dict."""
    out_dir = Path(out_dir)
    constitution = judge.constitution
    if not constitution.check_pairs:
        return skipped_result(judge)
    pairs = check_pairs(constitution, blind_seed=judge.config.seed)
    with OutputLock(out_dir):
        started = time.perf_counter()
        labeled = label_pairs(pairs, judge, out_dir, batch_size=batch_size, overwrite=overwrite, progress=progress,
                              output=LABELS)
        seconds = time.perf_counter() - started
        records = labeled.records
        if len(records) < len(pairs):
            raise UserError(f"judge check: {len(pairs) - len(records)} of {len(pairs)} check pairs failed to label "
                            f"(see {out_dir / 'failures.jsonl'}); run again to retry them")
        result = check_result(judge, [p_human(r) for r in records],
                              [(r["labels_by_order"]["ab"], r["labels_by_order"]["ba"]) for r in records],
                              [(r["chosen" if r["chosen_is"] == "a" else "rejected"][0]["content"],
                                r["rejected" if r["chosen_is"] == "a" else "chosen"][0]["content"], r["p_a"],
                                r["human_chosen"] == "a") for r in records])
        result["seconds_per_pair"] = _seconds_per_pair(out_dir, labeled.written, seconds)
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
