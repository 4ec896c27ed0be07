"""The `rlaif` commands that run the judge on pairs: judge-check, label, eval-labeler and rank, each
with its flags (`add_*`, called by rlaif/cli.py in the order `rlaif --help` lists them) and the
judge flags they share."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlaif.cli_common import engine_args, engine_config, judge_accuracy, positive


def cmd_judge_check(args) -> int:
    from rlaif.backends import load_engine
    from rlaif.config import config_hash
    from rlaif.constitution import load_constitution
    from rlaif.eval.judge_check import require_accuracy, run_judge_check
    from rlaif.judge import Judge, judge_check_line, judge_verdict

    threshold = None if args.require_judge_accuracy is None else judge_accuracy(args.require_judge_accuracy)
    cfg = judge_config(args)
    constitution = load_constitution(args.constitution)
    engine_cfg = engine_config(args)
    out = args.out or Path("runs") / "judge_check" / f"{constitution.name}-{config_hash([engine_cfg.kind, engine_cfg.model])[:8]}"
    engine = load_engine(engine_cfg)
    try:
        result = run_judge_check(Judge(engine, constitution, cfg), out, batch_size=args.batch_size,
                                 overwrite=args.overwrite)
    finally:
        engine.close()
    line = judge_check_line(result)
    print(f"warning: {line}" if judge_verdict(result) != "ok" else line)
    if result["status"] != "skipped":
        flips, per_pair = result["position_flip_rate"], result["seconds_per_pair"]
        print(f"  accuracy {result['accuracy']:.3f} (95 % CI {result['accuracy_ci95'][0]:.3f}-"
              f"{result['accuracy_ci95'][1]:.3f}), mean p(right) {result['mean_p_right']:.3f}, flip rate "
              f"{'n/a' if flips is None else f'{flips:.3f}'}, "
              f"{'n/a' if per_pair is None else f'{per_pair:.2f}'} s/pair -> {out}")
    if threshold is not None and result["status"] != "skipped":
        require_accuracy(result, threshold)
    return 0


def cmd_judge_audit(args) -> int:
    from rlaif.backends import load_engine
    from rlaif.config import config_hash
    from rlaif.constitution import load_constitution
    from rlaif.eval.judge_audit import REPORT, run_judge_audit
    from rlaif.judge import AuditGates, Judge

    cfg = judge_config(args)
    gates = AuditGates(**{f: getattr(args, f) for f in AuditGates.model_fields})
    constitution = load_constitution(args.constitution)
    engine_cfg = engine_config(args)
    out = args.out or Path("runs") / "judge_audit" / f"{constitution.name}-{config_hash([engine_cfg.kind, engine_cfg.model])[:8]}"
    engine = load_engine(engine_cfg)
    try:  # a tripped gate raises GateFailed: one line, exit 1 (rlaif/cli.py)
        result = run_judge_audit(Judge(engine, constitution, cfg), out, pairs_file=args.pairs,
                                 self_pairs_file=args.self_pairs, gates=gates, seed=args.seed)
    finally:
        engine.close()
    print("\n".join(["judge audit: " + line for line in result["lines"]] + [f"-> {Path(out) / REPORT}"]))
    return 0


def judge_config(args):
    """The judge's settings from the judge flags (a LabelConfig: the label stage's margin rule too)."""
    from rlaif.judge import make_config
    from rlaif.stages.labeler import LabelConfig

    return make_config(LabelConfig, "judge flags", mode="direct" if args.direct else "pairwise", debias=not args.no_debias,
                       cot=args.cot, clamp=tuple(args.clamp) if args.clamp else None,
                       cot_max_tokens=args.cot_max_tokens, principles=args.principles,
                       self_consistency=args.self_consistency, few_shot=args.few_shot, margin=args.margin,
                       drop_within_margin=args.drop_within_margin, seed=args.seed)


def cmd_label(args) -> int:
    from rlaif.executors import use_executor
    from rlaif.executors.cli import engine_for, executor_config
    from rlaif.constitution import load_constitution
    from rlaif.stages.labeler import run_label
    from rlaif.stages.pair_inputs import PairsFile

    from rlaif.judge import Judge

    cfg = judge_config(args)
    constitution = load_constitution(args.constitution)
    pairs = PairsFile(args.pairs)
    pairs.check()  # a bad pairs file fails before the model loads (read, not held)
    executor = executor_config(args)
    engine = engine_for(args, engine_config(args), executor)
    with use_executor(executor):
        try:
            s = run_label(pairs, Judge(engine, constitution, cfg), args.out, batch_size=args.batch_size,
                          overwrite=args.overwrite)
        finally:
            engine.close()
    flip = "" if s["position_flip_rate"] is None else f", position flip rate {s['position_flip_rate']:.3f}"
    print(f"label: {s['written']} new, {s['done_before']} already done, {s['failed']} failed{flip}; "
          f"{s['preferences']} preferences ({s['within_margin']} within margin) -> {Path(args.out) / 'preferences.jsonl'}")
    if s["failed"]:
        print(f"{s['failed']} pairs failed after retries; run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_eval_labeler(args) -> int:
    """The judge against human labels: HH-RLHF-style pairs, or labels made with `rlaif annotate`
    (a database, or its export); one path for both, each with its reader, run and report."""
    from rlaif.annotate.human_eval import is_annotation_source
    from rlaif.backends import load_engine
    from rlaif.constitution import load_constitution
    from rlaif.judge import Judge

    if is_annotation_source(args.human):
        from rlaif.annotate.human_eval import (format_summary as format_metrics, load_labels as check,
                                               run_human_eval as run_eval)
    else:
        from rlaif.eval.labeler_report import format_metrics, run_eval
        from rlaif.hh_rlhf import load_human_pairs as check

    cfg = judge_config(args)
    constitution = load_constitution(args.constitution)
    check(args.human)  # a bad human-label file fails before the model loads
    engine = load_engine(engine_config(args))
    try:
        m = run_eval(args.human, Judge(engine, constitution, cfg), args.out, limit=args.limit, seed=args.seed,
                     batch_size=args.batch_size, overwrite=args.overwrite)
    finally:
        engine.close()
    print(format_metrics(m, args.out))
    return 1 if m["failed"] else 0


def cmd_rank(args) -> int:
    from rlaif.eval.rank_cmd import cmd_rank as run

    return run(args, engine_config(args))


# ---------------------------------------------------------------------------------- flags


def judge_args(p: argparse.ArgumentParser, out_required: bool = True) -> None:
    p.add_argument("--constitution", default="harmless", help="constitution file or shipped name (default: %(default)s)")
    p.add_argument("--out", required=out_required, type=Path,
                   help="output folder" + ("" if out_required else f" (default: runs/{p.prog.split()[-1].replace('-', '_')}"
                                                                   "/CONSTITUTION-HASH)"))
    g = p.add_argument_group("judge")
    g.add_argument("--no-debias", action="store_true", help="judge one order only (default: both orders, averaged)")
    g.add_argument("--cot", action="store_true", help="generate a rationale first, then score (labels clamped)")
    g.add_argument("--clamp", type=float, nargs=2, metavar=("LO", "HI"), help="CoT clamp band (default 0.4 0.6)")
    g.add_argument("--cot-max-tokens", type=positive(int), help="rationale length in tokens (default 64)")
    g.add_argument("--principles", type=positive(int), default=1, help="principle ensemble size (default 1)")
    g.add_argument("--self-consistency", type=positive(int), default=1,
                   help="sampled rationales per judgement, averaged (needs --cot)")
    g.add_argument("--few-shot", type=int, default=0, help="exemplars from the constitution (default 0)")
    g.add_argument("--direct", action="store_true", help="score each reply 1-10 instead of comparing (d-RLAIF)")
    g.add_argument("--margin", type=float, default=0.0, help="|p - 0.5| below this is 'within margin'")
    g.add_argument("--drop-within-margin", action="store_true", help="leave within-margin pairs out of preferences")
    g.add_argument("--seed", type=int, default=0, help="principle draws, sampling, blind sides")
    g.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    engine_args(p, role="judge")


def add_judge_check(sub) -> None:
    p = sub.add_parser("judge-check", help="the judge on the constitution's unambiguous check pairs: accuracy "
                       "with a 95 %% CI, mean p(right), flip rate, s/pair; warns when the judge is at chance")
    p.add_argument("--require-judge-accuracy", metavar="X", help="exit 2 when accuracy is below X, in (0.5, 1]")
    judge_args(p, out_required=False)
    p.set_defaults(func=cmd_judge_check)


def add_judge_audit(sub) -> None:
    from rlaif.judge import GATES

    p = sub.add_parser("judge-audit", help="probe the judge for position, verbosity, template and injection bias "
                       "(and self-preference): effects with 95 %% CIs -> OUT/audit.json, audit.md; gates exit 1")
    p.add_argument("--pairs", help="pairs to audit on (any `rlaif label` pairs file; default: the constitution's "
                   "check pairs)")
    p.add_argument("--self-pairs", help="JSONL of prompt, own (the judge model's reply), other, p_reference "
                   "(an independent p(own better)): enables the self-preference probe")
    g = p.add_argument_group("gates (exit 1 when |effect| exceeds one)")
    for probe, field in GATES.items():
        g.add_argument("--" + field.replace("_", "-"), dest=field, type=float, metavar="X",
                       help=f"largest tolerated {probe} effect")
    judge_args(p, out_required=False)
    p.set_defaults(func=cmd_judge_audit)


def add_label(sub) -> None:
    from rlaif.executors.cli import add_executor_args

    p = sub.add_parser("label", help="label response pairs with AI feedback -> OUT/preferences.jsonl")
    p.add_argument("--pairs", required=True, help="JSONL: prompt + response_a/response_b, prompt + "
                   "chosen/rejected, or HH-RLHF transcripts")
    judge_args(p)
    add_executor_args(p)
    p.set_defaults(func=cmd_label)


def add_eval_labeler(sub) -> None:
    p = sub.add_parser("eval-labeler", help="label human-labelled pairs blind; agreement, calibration, "
                       "position and length bias -> OUT/metrics.json, calibration.png, report.md")
    p.add_argument("--human", required=True, help="HH-RLHF .jsonl/.jsonl.gz, hub:Anthropic/hh-rlhf[:DIR[:SPLIT]], "
                   "or your own labels: an `rlaif annotate` database or its exported JSONL")
    p.add_argument("--limit", type=positive(int), help="first N usable pairs only")
    judge_args(p)
    p.set_defaults(func=cmd_eval_labeler)


def add_rank(sub) -> None:
    p = sub.add_parser("rank", help="rank checkpoints: round-robin judgements on held-out prompts -> Bradley-Terry "
                       "ratings (Elo scale, 95 %% CIs), win-rate matrix, length-controlled win rates -> OUT/ranking.*")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT", help="two or more: model folders, model specs, "
                   "or responses JSONL files (prompt + response, e.g. best-of-n output); the first is the LC baseline")
    p.add_argument("--prompts", required=True, help="held-out prompts: JSONL with a 'prompt' field, or text lines")
    p.add_argument("--n-prompts", type=positive(int), help="the first N prompts only (default: all)")
    p.add_argument("--max-tokens", type=positive(int), default=128, help="reply length for model checkpoints")
    p.add_argument("--constitution", default="harmless", help="constitution the judge applies (default: %(default)s)")
    p.add_argument("--bootstrap", type=positive(int), default=1000, help="bootstrap draws for the CIs")
    p.add_argument("--outcomes", choices=["soft", "hard"], default="soft", help="fit the judge's p (soft, default) "
                   "or its verdict p > 0.5 (hard)")
    p.add_argument("--seed", type=int, default=0, help="principle draws and bootstrap (default: %(default)s)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="judge again instead of resuming")
    p.add_argument("--skip-judge-check", action="store_true", help="do not put the judge on the constitution's "
                   "check pairs first (the check's verdict then does not reach the report)")
    engine_args(p, role="judge")
    p.set_defaults(func=cmd_rank)
