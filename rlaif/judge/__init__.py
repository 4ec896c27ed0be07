"""The judge, one unit: `Judge(engine, constitution, config)` (rlaif/judge/judge.py) and how it
asks (`JudgeConfig`). Everything that asks a model which reply is better, or how good a reply is,
goes through a `Judge`; other modules import from `rlaif.judge` only, never its files.

    judge.py       the Judge: compare, score, group rewards, check, async twins
    config.py      JudgeConfig
    prompts.py     what the judge is shown: cuts, fences, few-shot, principle draws
    soft_labels.py reading its answers: soft labels, clamp, votes, the 1-10 distribution
    scoring.py     direct 1-10 scores from the score tokens
    batching.py    micro-batching of concurrent callers; per-unit failure isolation
    check.py       the judge check's maths and words
    audit.py       the judge audit: position, verbosity, template, injection, self-preference probes
"""

from rlaif.judge.audit import GATES, PROBES, AuditGates, audit_lines, gate_failures, judge_directed
from rlaif.judge.batching import MicroBatcher, isolated
from rlaif.judge.check import (FLAT_MARGIN, check_pairs, check_result, judge_at_chance, judge_check_line,
                               judge_verdict, skipped_result)
from rlaif.judge.config import JudgeConfig, make_config
from rlaif.judge.judge import MODES, Judge, Judgement, Score
from rlaif.judge.prompts import conversation_text, cut, draw_principles, sanitize
from rlaif.judge.soft_labels import pair_label_from_scores, soft_label

__all__ = ["AuditGates", "GATES", "PROBES", "audit_lines", "gate_failures", "judge_directed", "Judge", "JudgeConfig", "Judgement", "Score", "MODES", "make_config", "MicroBatcher", "isolated",
           "check_pairs", "check_result", "skipped_result", "judge_at_chance", "judge_verdict", "judge_check_line",
           "FLAT_MARGIN", "conversation_text", "cut", "sanitize", "draw_principles", "pair_label_from_scores",
           "soft_label"]
