"""`rlaif ...`: parse arguments, call the package, print a short summary. No logic lives here.

Every UserError becomes one line on stderr and exit code 2; records that failed for good after
their retries make exit code 1; Ctrl-C stops cleanly (exit 130) and the run resumes next time.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from rlaif.version import __version__
from rlaif import cli_judge
from rlaif.cli_common import SPEC_HELP, engine_args, engine_config, judge_accuracy, positive
from rlaif.errors import GateFailed, UserError
from pydantic import ValidationError


def _quiet_libraries() -> None:
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


def _summary(result) -> int:
    print(f"{result.stage}: {result.written} new, {result.done_before} already done, "
          f"{result.failed} failed -> {result.path}")
    if result.failed:
        print(f"{result.failed} records failed after retries; see {result.path.parent / 'failures.jsonl'}; "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------- commands


def cmd_models(args) -> int:
    from rlaif.backends import ENGINES
    from rlaif.backends.embedded import EMBEDDED, cache_root

    print("engines:")
    for name, about in ENGINES.items():
        print(f"  {name:13s} {about}")
    print("embedded models (no network needed):")
    for name, m in EMBEDDED.items():
        print(f"  embedded:{name:24s} {m.about}")
    print(f"cache: {cache_root()}")
    return 0


def cmd_generate(args) -> int:
    from rlaif.executors import use_executor
    from rlaif.executors.cli import engine_for, executor_config
    from rlaif.prompts_io import iter_prompts
    from rlaif.records import Reread
    from rlaif.backends.base import independent_requests
    from rlaif.runner import run_stage
    from rlaif.stages.responses import ResponsesConfig, check_context, iter_expand, make_process

    cfg = ResponsesConfig(n=args.n, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)
    prompts = Reread(lambda: iter_prompts(args.prompts))  # streamed on every pass, never held
    for _ in prompts:  # a bad prompt file fails before the model loads
        pass
    engine_cfg = engine_config(args)
    executor = executor_config(args)
    engine = engine_for(args, engine_cfg, executor)
    with use_executor(executor):
        try:
            check_context(engine, prompts, cfg.max_tokens, args.prompts)
            items = Reread(lambda: iter_expand(prompts, engine.model, cfg))
            result = run_stage("responses", items, make_process(engine, cfg), args.out,
                               config={"responses": cfg.model_dump(), "engine": engine_cfg.model_dump(mode="json")},
                               batch_size=args.batch_size, overwrite=args.overwrite,
                               stats=getattr(engine, "stats", None),
                               fixed_batches=not independent_requests(engine))  # API answers do not depend on the batch
        finally:
            engine.close()
    return _summary(result)


def cmd_run(args) -> int:
    from rlaif.pipeline import run_pipeline

    overrides = list(args.set)
    if args.require_judge_accuracy is not None:
        overrides.append(f"judge_check.require_accuracy={judge_accuracy(args.require_judge_accuracy)}")
    roles = {role: getattr(args, role) for role in ("policy", "critic", "judge") if getattr(args, role)}
    launcher = None
    if args.launcher == "accelerate":
        from rlaif.train.launcher import AccelerateLauncher

        launcher = AccelerateLauncher(args.config_file, args.num_processes)
    elif args.config_file or args.num_processes:
        raise UserError("--config_file and --num_processes apply with --launcher accelerate")
    return run_pipeline(args.pipeline, args.out, overrides=overrides, constitution=args.constitution,
                        overwrite=args.overwrite, roles=roles, launcher=launcher)


def cmd_critique(args) -> int:
    from rlaif.executors import use_executor
    from rlaif.executors.cli import engine_for, executor_config
    from rlaif.constitution import load_constitution
    from rlaif.stages.critique_revision import CritiqueConfig, format_summary, run_critique
    from rlaif.stages.response_inputs import ResponsesFile

    cfg = CritiqueConfig(rounds=args.rounds, seed=args.seed, few_shot=args.few_shot,
                         temperature=args.temperature, critique_max_tokens=args.critique_max_tokens,
                         revision_max_tokens=args.revision_max_tokens)
    constitution = load_constitution(args.constitution)
    responses = ResponsesFile(args.responses)
    responses.check()  # a bad responses file fails before the model loads (read, not held)
    executor = executor_config(args)
    engine = engine_for(args, engine_config(args), executor)
    with use_executor(executor):
        try:
            summary = run_critique(responses, constitution, engine, args.out, batch_size=args.batch_size,
                                   overwrite=args.overwrite, config=cfg)
        finally:
            engine.close()
    print(format_summary(summary))
    if summary["failed"]:
        print(f"{summary['failed']} chains failed after retries; see {args.out / 'failures.jsonl'}; "
              "run the same command again to retry them", file=sys.stderr)
        return 1
    return 0


def cmd_constitution_check(args) -> int:
    from rlaif.constitution import check_constitutions

    print(check_constitutions(args.files))
    return 0


# ---------------------------------------------------------------------------------- parser


def cmd_rate(args) -> int:
    from rlaif.backends import load_engine
    from rlaif.constitution import load_constitution
    from rlaif.judge import Judge
    from rlaif.stages.rate import PREFERENCES, RANKINGS, RateConfig, read_groups

    cfg = RateConfig(aspects=[a for a in args.aspects.split(",") if a] if args.aspects else None,
                     rank_by=args.rank_by, seed=args.seed)
    read_groups(args.completions)  # a bad completions file fails before the model loads
    constitution = load_constitution(args.constitution)
    engine = load_engine(engine_config(args))
    try:
        from rlaif.stages.rate import run_rate

        s = run_rate(args.completions, Judge(engine, constitution, cli_judge.judge_config(args)), args.out, cfg,
                     batch_size=args.batch_size, overwrite=args.overwrite)
    finally:
        engine.close()
    print(f"rate: {s['prompts']} prompts, {s['completions']} completions on {len(s['aspects'])} aspects "
          f"({s['written']} new, {s['done_before']} already done, {s['failed']} failed); {s['preferences']} "
          f"binarised pairs ({s['ties']} ties left out) -> {Path(args.out) / PREFERENCES}; {s['rankings']} rankings "
          f"by {s['ranked_by']} -> {Path(args.out) / RANKINGS}")
    return 1 if s["failed"] else 0


def build_parser() -> argparse.ArgumentParser:
    from rlaif.executors.cli import add_executor_args

    parser = argparse.ArgumentParser(
        prog="rlaif", description="Constitution -> AI feedback -> preference data and aligned models.")
    parser.add_argument("--version", action="version", version=f"rlaif {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="list engines and embedded models")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("generate", help="sample responses to a prompt file -> OUT/responses.jsonl")
    p.add_argument("--prompts", required=True, help="JSONL with a 'prompt' field, or text, one per line")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--n", type=positive(int), default=1, help="samples per prompt")
    p.add_argument("--max-tokens", type=positive(int), default=128)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    engine_args(p)
    add_executor_args(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("run", help="run a pipeline YAML (resumable) -> OUT/<stage>/")
    p.add_argument("pipeline", help="pipeline YAML file, or the name of a shipped one")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a pipeline value, e.g. --set prompts.limit=200 (repeatable)")
    p.add_argument("--constitution", help="use this constitution instead of the pipeline's")
    p.add_argument("--overwrite", action="store_true", help="start every stage over")
    for role, what in (("policy", "samples, is trained and is the reference"),
                       ("critic", "writes critiques and revisions (default: the policy)"),
                       ("judge", "labels, is checked, evaluates and rewards (default: the policy)")):
        p.add_argument(f"--{role}", metavar="SPEC", help=f"replace the pipeline's {role} model ({what}): {SPEC_HELP}; "
                       f"other settings of the role stay as the pipeline sets them (--set {role}.FIELD=...)")
    p.add_argument("--require-judge-accuracy", metavar="X",
                   help="stop (exit 2) before labeling if the judge check's accuracy is below X, in (0.5, 1]")
    p.add_argument("--launcher", choices=("local", "accelerate"), default="local",
                   help="run the training stages in this process (local) or as `accelerate launch` subprocesses")
    p.add_argument("--config_file", metavar="F", help="with --launcher accelerate: an accelerate config YAML, or "
                   "a shipped one: cpu_ddp, ddp, fsdp2, zero2, zero3 (default: accelerate's own default config)")
    p.add_argument("--num_processes", type=int, metavar="N", help="with --launcher accelerate: processes per stage "
                   "(default: the config file's)")
    p.set_defaults(func=cmd_run)

    cli_judge.add_judge_check(sub)
    cli_judge.add_judge_audit(sub)

    p = sub.add_parser("critique", help="critique -> revision rounds against a constitution (SL-CAI) -> "
                       "OUT/chains.jsonl, sl_cai.jsonl, revision_pairs.jsonl")
    p.add_argument("--constitution", required=True, help="constitution YAML, or a shipped name (harmless, ...)")
    p.add_argument("--responses", required=True, type=Path, help="JSONL with prompt + response (e.g. "
                   "the responses.jsonl of `rlaif generate`)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--rounds", type=positive(int), default=2, help="critique-revision rounds per response")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--few-shot", type=int, default=1, help="constitution exemplars shown in each prompt")
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--critique-max-tokens", type=positive(int), default=96)
    p.add_argument("--revision-max-tokens", type=positive(int), default=160)
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    engine_args(p, role="critic")
    add_executor_args(p)
    p.set_defaults(func=cmd_critique)

    p = sub.add_parser("constitution", help="constitution tools: `rlaif constitution check FILE...`")
    csub = p.add_subparsers(dest="constitution_command", metavar="ACTION", required=True)
    c = csub.add_parser("check", help="validate constitutions and print a summary of each")
    c.add_argument("files", nargs="+", help="constitution YAML files or shipped names")
    c.set_defaults(func=cmd_constitution_check)

    cli_judge.add_label(sub)
    p = sub.add_parser("rate", help="UltraFeedback-style: rate K completions per prompt 1-10 on the constitution's "
                       "principles -> OUT/ratings.jsonl, binarised preferences.jsonl, rankings.jsonl")
    p.add_argument("--completions", required=True, help="JSONL: prompt + completions (a list), or prompt + response "
                   "per record (rlaif generate's responses.jsonl), grouped by prompt")
    p.add_argument("--aspects", help="comma-separated principle ids to rate on (default: every principle)")
    p.add_argument("--rank-by", choices=["ratings", "pairwise"], default="ratings",
                   help="order rankings.jsonl by mean rating, or by the judge's pairwise labels of all pairs")
    cli_judge.judge_args(p)
    p.set_defaults(func=cmd_rate)
    cli_judge.add_eval_labeler(sub)

    from rlaif.cli_train import register as register_training

    register_training(sub)
    cli_judge.add_rank(sub)

    from rlaif.annotate.cli import register as register_annotate

    register_annotate(sub)

    from rlaif.integrations.cli import register as register_serve_reward

    register_serve_reward(sub)

    from rlaif.gguf_server import register as register_gguf_server

    register_gguf_server(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _quiet_libraries()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file-size limit becomes an EFBIG error, not a kill
    try:
        return args.func(args)
    except UserError as e:
        print(f"rlaif: error: {e}", file=sys.stderr)
        return 2
    except GateFailed as e:  # the run worked; what it measured stops it
        print(str(e), file=sys.stderr)
        return 1
    except ValidationError as e:  # a flag value a config model rejects (e.g. --temperature -1)
        from rlaif.config import describe_validation_error

        print(f"rlaif: error: {describe_validation_error('command-line options', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rlaif: interrupted; finished batches are saved — run the same command to resume",
              file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        return 0
    except OSError as e:
        if e.errno in (28, 27, 122):  # ENOSPC, EFBIG, EDQUOT
            where = f" ({e.filename})" if e.filename else ""
            print(f"rlaif: error: no space left to write{where}: {e.strerror}; finished batches are "
                  "saved, free space and run the same command to resume", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
