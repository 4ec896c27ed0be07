"""The judge check's maths and words: can the judge tell the constitution's check pairs apart?

Each constitution carries unambiguous check pairs (a prompt, a better and a worse reply, optionally
the principle to judge them by). For pair i, with p_i = p(better ≻ worse):

    accuracy = mean_i s_i,   s_i = 1 if p_i > 0.5, 0.5 if p_i = 0.5, 0 otherwise
    CI95     = percentile bootstrap of that mean over the pairs (rlaif.metrics)

A judge whose CI includes 0.5 is *at chance*: its labels carry no signal. One whose CI lies wholly
below 0.5 is *below chance*: it prefers the worse reply. Which side shows the better reply is a
seeded coin per pair, so a judge that always picks the first-shown reply cannot pass when
debiasing is off. `Judge.check()` runs this in memory; `rlaif judge-check` (rlaif/eval/judge_check.py)
writes the labels and the result to files, resumably.
"""

from __future__ import annotations

import random
from typing import Sequence

from rlaif import metrics as M
from rlaif.constitution import Constitution
from rlaif.records import record_id

FLAT_MARGIN = 0.05  # a passing judge whose mean p(right) is below 0.5 + this gets a caution in its line


def check_pairs(constitution: Constitution, *, blind_seed: int | None = None) -> list[dict]:
    """The constitution's check pairs as label inputs: a = better, b = worse, the prompt as one user
    message, `principle` where the pair names one; `human_chosen` says which side holds the better
    reply. With `blind_seed`, a seeded coin per pair puts the better reply on side b instead for
    about half of them."""
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


def check_status(ci: Sequence[float]) -> str:
    lo, hi = ci
    if lo <= 0.5 <= hi:
        return "at_chance"
    return "below_chance" if hi < 0.5 else "ok"


def _identity(judge) -> dict:
    return {"judge": {"engine": judge.engine.name, "model": judge.engine.model},
            "constitution": {"name": judge.constitution.name, "version": judge.constitution.version}}


def skipped_result(judge) -> dict:
    return {"status": "skipped", "pairs": 0, **_identity(judge),
            "message": (f"judge check skipped: constitution {judge.constitution.name} carries no check pairs, so "
                        f"nothing shows whether {judge.engine.model} can judge it")}


def check_result(judge, p_right: Sequence[float], orders: Sequence[tuple], sides: Sequence[tuple]) -> dict:
    """The result of a judge check: `p_right` p(better ≻ worse) per pair, `orders` its (ab, ba)
    labels of side a, `sides` (a, b, p_a, whether a is the better reply) for the length figures."""
    cfg = judge.config
    lo, hi = M.bootstrap_ci(M.agreement_scores(p_right), seed=cfg.seed)
    both = [(ab, ba) for ab, ba in orders if ab is not None and ba is not None]
    len_right = [len(a if a_better else b) for a, b, _, a_better in sides]
    len_wrong = [len(b if a_better else a) for a, b, _, a_better in sides]
    result = {
        "status": check_status((lo, hi)), "pairs": len(p_right),
        "accuracy": M.accuracy(p_right), "accuracy_ci95": [lo, hi],
        "mean_p_right": sum(p_right) / len(p_right),
        "position_flip_rate": M.position_flip_rate([x for x, _ in both], [y for _, y in both]) if both else None,
        "prefers_longer_rate": M.prefers_longer_rate([s[2] for s in sides], [len(s[0]) for s in sides],
                                                     [len(s[1]) for s in sides]),
        "better_is_longer_rate": M.human_prefers_longer_rate(len_right, len_wrong),
        **_identity(judge),
        "labeler": {"mode": cfg.mode, "debias": cfg.debias and cfg.mode == "pairwise", "cot": cfg.cot,
                    "few_shot": cfg.few_shot, "seed": cfg.seed},
    }
    result["message"] = judge_check_line(result)
    return result


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


__all__ = ["FLAT_MARGIN", "check_pairs", "check_status", "check_result", "skipped_result", "judge_at_chance",
           "judge_verdict", "judge_check_line"]
