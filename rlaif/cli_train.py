"""`rlaif` training commands: train-rm, dpo, orpo, sft, kto, ppo, grpo, plot-reward-kl, best-of-n, combine-rm,
train-rm-ensemble and rs-ft. Every flag of a command comes from a pydantic model (rlaif/cli_flags.py):
a trainer's own config (a YAML `--config` first, then the flags, then `--set`), or, for what is not a
trainer field (the ensemble's K, the sampling of rs-ft, combine-rm's inputs), a small model here. Each
command calls the package and prints a short summary; rlaif/cli.py registers them (`register`) and
handles errors and exit codes for every command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import Field

from rlaif.cli_common import engine_args, engine_config
from rlaif.cli_flags import TRAIN_SPELLINGS, ModelFlags, add_command, build
from rlaif.config import Strict
from rlaif.errors import UserError

# ---------------------------------------------------------------- the commands' flags

LORA = {"lora.r": ("--lora-r",)}  # `--lora-r R`: LoRA adapters of rank R, alpha 2R unless --lora.alpha
HARD_LABELS = {"soft_labels": ("--hard-labels",)}  # --no-soft-labels: every pair counts as p = 1
JUDGE = {"judge": ("--labeler-model",)}


def trainer(model: str, *required: str, spellings: dict | None = None, exclude=()) -> ModelFlags:
    """A trainer config's fields as flags; `--out` (output_dir) and `required` must be given."""
    return ModelFlags(model, spellings={**TRAIN_SPELLINGS, **(spellings or {})}, required=("output_dir", *required),
                      exclude=exclude, title="trainer config (also runs under `accelerate launch $(which rlaif) ...`)")


class EnsembleOptions(Strict):
    k: int = Field(4, description="number of members, at least 2")
    lambda_std: float = Field(1.0, description="R = mean − λ_std·std of the centred members")
    min: bool = Field(False, description="R = min over the members instead of mean − λ·std")


class SampleOptions(Strict):
    """What best-of-n and rs-ft sample from and score with."""

    prompts: str = Field(description="JSONL with a 'prompt' field, or text, one per line")
    reward: str = Field(description="rm:DIR (a train-rm output), combined:FILE, ensemble:DIR|DIR1,DIR2,..., "
                        "or labeler:direct")
    judge: str | None = Field(None, description="labeler:direct: the judge's model spec (default: the policy, "
                              "which then judges itself)")
    constitution: str | None = Field(None, description="labeler:direct: constitution file or name")
    overwrite: bool = Field(False, description="sample again instead of resuming")


class BestOfNOptions(SampleOptions):
    out: str = Field(description="output folder")


class RejectionSamplingOptions(SampleOptions):
    n: int = Field(4, description="samples per prompt, K")
    max_tokens: int = Field(128, description="max new tokens per sample")
    temperature: float = Field(0.8, description="sampling temperature")
    sample_batch_size: int = Field(8, description="prompts per sampling call")
    device: str = Field("auto", description="sampling engine: auto, cpu, cuda, cuda:N")


class CombineOptions(Strict):
    helpful: str = Field(description="helpful reward-model folder (train-rm output)")
    harmless: str = Field(description="harmless reward-model folder (train-rm output)")
    calibration: str = Field(description="JSONL of prompt + candidates (every one counts, e.g. best_of_n.jsonl), "
                             "response, or chosen/rejected that the whitening mean/std are measured on")
    out: str = Field(description="the combination file to write (YAML)")
    threshold: float = Field(-1.0, description="use the harmless score below this whitened value")
    unsafe_category: list[str] = Field([], description="prompts whose 'category' is NAME count as unsafe "
                                       "(repeatable); 'unsafe: true' always does")
    unsafe_prompts: str | None = Field(None, description="a prompt file whose flagged records count as unsafe "
                                       "wherever used")
    device: str = Field("cpu", description="where the reward models run")


def plot_options():
    """plot-reward-kl's flags (made on use: the positional type comes from pydantic-settings)."""
    from pydantic_settings import CliPositionalArg

    class PlotOptions(Strict):
        runs: CliPositionalArg[list[str]] = Field(description="PPO output folders")
        out: str = Field(description="the PNG to write")
        title: str = Field("reward vs KL: single RM vs ensemble", description="the plot's title")

    return PlotOptions


def _fields(args, at: int = 0) -> dict:
    return args.flags[at].values(args)


def _lora(fields: dict) -> dict:
    """`--lora-r R` alone keeps the older meaning: alpha = 2R."""
    lora = fields.get("lora")
    if isinstance(lora, dict) and "r" in lora and "alpha" not in lora:
        try:
            fields["lora"] = {**lora, "alpha": 2 * int(lora["r"])}
        except (TypeError, ValueError):
            pass  # the config says what is wrong with r
    return fields


def _config(cls, args, fixed: dict | None = None):
    """The command's trainer config; `fixed`: fields the command made from their flags itself."""
    fixed = fixed or {}
    given = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in fixed})
    return build(cls, given, args.flags[0], {**_lora(args.flags[0].values(given)), **fixed})


def _train_done(name: str, result: dict, out) -> int:
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        shown = {k: v for k, v in result.items() if k.endswith(("_start", "_end")) or k in ("steps", "seconds_per_step")}
        print(f"{name}: {json.dumps(shown, sort_keys=True)} -> {out}")
    return 0


def cmd_train_rm(args) -> int:
    from rlaif.train.reward_model import RewardConfig, train_reward_model

    cfg = _config(RewardConfig, args)
    return _train_done("train-rm", train_reward_model(cfg), cfg.output_dir)


def cmd_dpo(args) -> int:
    from rlaif.train.dpo import DPOConfig, train_dpo

    cfg = _config(DPOConfig, args)
    return _train_done(f"dpo ({cfg.loss})", train_dpo(cfg), cfg.output_dir)


def cmd_orpo(args) -> int:
    from rlaif.train.orpo import ORPOConfig, train_orpo

    cfg = _config(ORPOConfig, args)
    return _train_done("orpo", train_orpo(cfg), cfg.output_dir)


def cmd_sft(args) -> int:
    from rlaif.train.sft import SFTConfig, train_sft

    cfg = _config(SFTConfig, args)
    return _train_done("sft", train_sft(cfg), cfg.output_dir)


def cmd_kto(args) -> int:
    from rlaif.train.kto import KTOConfig, train_kto

    cfg = _config(KTOConfig, args)
    return _train_done("kto", train_kto(cfg), cfg.output_dir)


def cmd_ppo(args) -> int:
    from rlaif.train.ppo import PPOConfig, train_ppo

    cfg = _config(PPOConfig, args)
    return _train_done("ppo", train_ppo(cfg), cfg.output_dir)


def grpo_reward(spec: str) -> dict:
    """`--reward` of `rlaif grpo` -> one `rewards:` item: labeler:direct | judge:direct,
    judge:pairwise, judge:pairwise-reference, rule:MODULE:FUNCTION, rm:DIR, ensemble:..., combined:FILE."""
    if spec in ("labeler:direct", "judge:direct"):
        return {"kind": "judge_direct"}
    if spec == "judge:pairwise":
        return {"kind": "judge_pairwise"}
    if spec == "judge:pairwise-reference":
        return {"kind": "judge_pairwise", "name": "judge_pairwise_reference", "against": "reference"}
    head, _, rest = spec.partition(":")
    if head == "rule" and rest:
        return {"kind": "rule", "name": rest.rpartition(":")[2], "function": rest}
    if head in ("rm", "ensemble", "combined") and rest:
        return {"kind": "model", "name": head, "spec": spec}
    raise UserError(f"--reward {spec!r}: expected labeler:direct, judge:pairwise, judge:pairwise-reference, "
                    "rule:MODULE:FUNCTION, rm:DIR, ensemble:... or combined:FILE")


def _grpo_rewards(raw: list[str]) -> list:
    """`--reward SPEC` items (or `--rewards JSON` items, already mappings) -> `rewards:` items."""
    return [r if isinstance(r, dict) else grpo_reward(r) for r in raw]


def cmd_grpo(args) -> int:
    from rlaif.train.grpo import GRPOConfig
    from rlaif.train.grpo_loop import train_grpo

    raw = list(getattr(args, "rewards", None) or [])  # the flag's strings, before JSON decoding
    fixed = {"rewards": _grpo_rewards([_json_or_text(r) for r in raw])} if raw else {}
    cfg = _config(GRPOConfig, args, fixed)
    return _train_done(f"grpo ({cfg.advantage})", train_grpo(cfg), cfg.output_dir)


def _json_or_text(text: str):
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            raise UserError(f"--reward {text!r}: not a JSON mapping") from None
    return text


def cmd_plot_reward_kl(args) -> int:
    from rlaif.train.plots import plot_reward_vs_kl_runs, read_log

    from rlaif.config import validate

    opts = validate(args.flags[0].model, _fields(args), "command line")
    runs = {}
    for d in opts.runs:
        log, summary = Path(d) / "train_log.jsonl", Path(d) / "summary.json"
        if not log.is_file():
            raise UserError(f"{d}: no train_log.jsonl; expected a PPO output folder")
        reward = json.loads(summary.read_text()).get("reward", "?") if summary.is_file() else "?"
        runs[f"{Path(d).name} ({reward})"] = read_log(log)
    print(f"plot-reward-kl: {len(runs)} runs -> {plot_reward_vs_kl_runs(runs, Path(opts.out), title=opts.title)}")
    return 0


def cmd_best_of_n(args) -> int:
    from rlaif.backends import load_engine
    from rlaif.config import validate
    from rlaif.prompts_io import read_prompts
    from rlaif.train.best_of_n import BestOfNConfig, run_best_of_n
    from rlaif.train.rewards import reward_fn_from_spec

    cfg = build(BestOfNConfig, args, args.flags[0], {"batch_size": args.batch_size})
    opts = validate(BestOfNOptions, _fields(args, 1), "command line")
    prompts = read_prompts(opts.prompts)
    reward_fn = reward_fn_from_spec(opts.reward, judge=opts.judge or args.model,
                                    constitution=opts.constitution, prompt_records=prompts)
    engine = load_engine(engine_config(args))
    try:
        summary = run_best_of_n(prompts, engine, reward_fn, cfg, opts.out, overwrite=opts.overwrite)
    finally:
        engine.close()
    print(f"best-of-{cfg.n}: {json.dumps(summary, sort_keys=True)} -> {Path(opts.out) / 'best_of_n.jsonl'}")
    return 1 if summary.get("failed") else 0


def cmd_combine_rm(args) -> int:
    from rlaif.config import validate
    from rlaif.train.reward_combine import build_combination

    o = validate(CombineOptions, _fields(args), "command line")
    cfg = build_combination(o.helpful, o.harmless, o.calibration, Path(o.out), threshold=o.threshold,
                            unsafe_categories=o.unsafe_category, unsafe_prompts=o.unsafe_prompts, device=o.device)
    print(f"combine-rm: helpful mean {cfg.helpful_whitening.mean:.4f} std {cfg.helpful_whitening.std:.4f}, "
          f"harmless mean {cfg.harmless_whitening.mean:.4f} std {cfg.harmless_whitening.std:.4f} "
          f"(n={cfg.helpful_whitening.n}), threshold {cfg.threshold} -> {o.out}; use --reward combined:{o.out}")
    return 0


def cmd_train_rm_ensemble(args) -> int:
    from rlaif.config import validate
    from rlaif.train.reward_ensemble import check_k, train_ensemble
    from rlaif.train.reward_model import RewardConfig

    o = validate(EnsembleOptions, _fields(args, 1), "command line")
    check_k(o.k)
    cfg = _config(RewardConfig, args)
    summary = train_ensemble(cfg, o.k, mode="min" if o.min else "mean-std", lambda_std=o.lambda_std)
    print(f"train-rm-ensemble: {json.dumps(summary, sort_keys=True)} -> {cfg.output_dir}; "
          f"use --reward ensemble:{cfg.output_dir}")
    return 0


def cmd_rs_ft(args) -> int:
    from rlaif.backends import load_engine
    from rlaif.config import EngineConfig, parse_model_spec, validate
    from rlaif.prompts_io import read_prompts
    from rlaif.train.best_of_n import BestOfNConfig
    from rlaif.train.rewards import reward_fn_from_spec
    from rlaif.train.rejection_sampling import finetune_on_best, sample_best
    from rlaif.train.sft import SFTConfig

    o = validate(RejectionSamplingOptions, _fields(args, 1), "command line")
    sft_cfg = _config(SFTConfig, args)
    bon = validate(BestOfNConfig, {"n": o.n, "max_tokens": o.max_tokens, "temperature": o.temperature,
                                   "seed": sft_cfg.seed, "batch_size": o.sample_batch_size}, "command line")
    prompts = read_prompts(o.prompts)
    reward_fn = reward_fn_from_spec(o.reward, judge=o.judge or sft_cfg.policy,
                                    constitution=o.constitution, prompt_records=prompts)
    engine = load_engine(parse_model_spec(sft_cfg.policy, EngineConfig(device=o.device)))
    try:
        data, summary = sample_best(prompts, engine, reward_fn, bon, sft_cfg.output_dir, overwrite=o.overwrite)
    finally:
        engine.close()
    judge = getattr(reward_fn, "engine", None)  # labeler:direct holds a judge engine: free it before training
    if judge is not None:
        judge.close()
    del reward_fn
    print(f"rs-ft: best of {bon.n}: {json.dumps(summary, sort_keys=True)} -> {data}")
    if summary.get("failed"):
        print(f"{summary['failed']} prompts failed after retries; run the same command again to retry them",
              file=sys.stderr)
        return 1
    return _train_done("rs-ft (sft on the kept samples)", finetune_on_best(data, sft_cfg), sft_cfg.output_dir)


def register(sub) -> None:
    """Add the training commands to `rlaif`'s subcommands (their flags are made when one is parsed)."""
    add_command(sub, "train-rm", func=cmd_train_rm, flags=[trainer("rlaif.train.reward_model:RewardConfig", "prefs")],
                help="train a reward model on (soft-label) preference pairs or K-wise rankings -> OUT/")
    add_command(sub, "dpo", func=cmd_dpo, flags=[trainer("rlaif.train.dpo:DPOConfig", "prefs",
                                                         spellings={**LORA, **HARD_LABELS})],
                help="DPO / IPO / SimPO / CPO on (soft-label) preference pairs -> OUT/")
    add_command(sub, "orpo", func=cmd_orpo, flags=[trainer("rlaif.train.orpo:ORPOConfig", "prefs",
                                                           spellings={**LORA, **HARD_LABELS})],
                help="ORPO: SFT on the chosen replies plus an odds-ratio preference term, no reference model, on "
                "(soft-label) preference pairs -> OUT/")
    add_command(sub, "sft", func=cmd_sft, flags=[trainer("rlaif.train.sft:SFTConfig", "data", spellings=LORA)],
                help="SL-CAI: supervised fine-tuning on prompt/completion records (loss on the completion only), "
                "e.g. critique/sl_cai.jsonl -> OUT/")
    add_command(sub, "kto", func=cmd_kto, flags=[trainer("rlaif.train.kto:KTOConfig", "data", spellings={
        **LORA, "data_format": ("--format",), "score_threshold": ("--threshold",)})],
                help="KTO on binary desirable/undesirable feedback (unpaired labels, direct scores with a threshold, "
                "or the sides of preference pairs) -> OUT/")
    add_command(sub, "ppo", func=cmd_ppo, flags=[trainer("rlaif.train.ppo:PPOConfig", "prompts", "reward",
                                                         spellings=JUDGE)],
                help="PPO against a reward model or the labeler's direct score -> OUT/")
    add_command(sub, "grpo", func=cmd_grpo, flags=[trainer("rlaif.train.grpo:GRPOConfig", "prompts", spellings={
        **JUDGE, "rewards": ("--reward",), "reward_weights": ("--reward-weight",)})],
                help="GRPO / RLOO / Dr. GRPO: G replies per prompt, the group as baseline, rewards from the judge, "
                "reward models and rules (weighted) -> OUT/")
    add_command(sub, "plot-reward-kl", func=cmd_plot_reward_kl, layered=False,
                flags=[ModelFlags(plot_options, required=("out",), title="plot")],
                help="several PPO runs (e.g. a single RM and an RM ensemble) on one reward-vs-KL plot -> PNG")
    p = add_command(sub, "best-of-n", func=cmd_best_of_n, layered=False,
                    flags=[ModelFlags("rlaif.train.best_of_n:BestOfNConfig", exclude=("batch_size",),
                                      title="sampling (BestOfNConfig)"),
                           ModelFlags(BestOfNOptions, required=("prompts", "reward", "out"), spellings=JUDGE,
                                      title="inputs")],
                    help="sample N responses per prompt, keep the best by reward -> OUT/best_of_n.jsonl")
    engine_args(p)
    add_command(sub, "combine-rm", func=cmd_combine_rm, layered=False,
                flags=[ModelFlags(CombineOptions, required=("helpful", "harmless", "calibration", "out"),
                                  title="inputs")],
                help="helpful + harmless reward models combined the Llama 2 way (harmless score on unsafe prompts "
                "or below a threshold), whitened on a calibration set -> FILE.yaml")
    add_command(sub, "train-rm-ensemble", func=cmd_train_rm_ensemble,
                flags=[trainer("rlaif.train.reward_model:RewardConfig", "prefs"),
                       ModelFlags(EnsembleOptions, title="ensemble")],
                help="K reward models on seeded bootstrap resamples of the preferences -> OUT/member_*/ and "
                "OUT/ensemble.yaml (use --reward ensemble:OUT)")
    add_command(sub, "rs-ft", aliases=["rejection-sampling"], func=cmd_rs_ft,
                flags=[trainer("rlaif.train.sft:SFTConfig", exclude=("data",), spellings=LORA),
                       ModelFlags(RejectionSamplingOptions, required=("prompts", "reward"), spellings=JUDGE,
                                  title="sampling")],
                help="rejection-sampling fine-tuning: sample K responses per prompt, keep the best by a reward, SFT "
                "the policy on them -> OUT/")
