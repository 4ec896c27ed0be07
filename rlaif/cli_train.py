"""`rlaif` training commands: train-rm, dpo, orpo, sft, kto, ppo, grpo, plot-reward-kl, best-of-n, combine-rm,
train-rm-ensemble and rs-ft. Each parses its flags into the trainer's config (a YAML `--config`
first, then the flags, then `--set`), calls the package and prints a short summary; rlaif/cli.py
registers them (`register`) and handles errors and exit codes for every command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from rlaif.cli_common import engine_args, engine_config, positive
from rlaif.errors import UserError


def _train_args(p: argparse.ArgumentParser, out_help: str) -> None:
    g = p.add_argument_group("training (also runs under `accelerate launch $(which rlaif) ...`)")
    g.add_argument("--out", required=True, help=out_help)
    g.add_argument("--config", help="YAML with the trainer's config; flags given here override it")
    g.add_argument("--steps", type=positive(int), help="optimizer steps (PPO: rollout batches); overrides --epochs")
    g.add_argument("--epochs", type=positive(float), help="passes over the data (default 1)")
    g.add_argument("--lr", type=positive(float), help="learning rate")
    g.add_argument("--batch-size", type=positive(int), help="global batch, split over processes")
    g.add_argument("--grad-accum", type=positive(int), help="micro-batches per optimizer step")
    g.add_argument("--max-length", type=positive(int), help="max tokens per sequence")
    g.add_argument("--seed", type=int)
    g.add_argument("--eval-file", help="held-out preference JSONL, evaluated every --eval-every steps")
    g.add_argument("--eval-every", type=positive(int))
    g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config field")


def _train_fields(args) -> dict:
    return {"output_dir": args.out, "max_steps": args.steps, "epochs": args.epochs, "learning_rate": args.lr,
            "batch_size": args.batch_size, "grad_accum": args.grad_accum, "max_length": args.max_length,
            "seed": args.seed, "eval_file": args.eval_file, "eval_every": args.eval_every}


def _train_done(name: str, result: dict, out) -> int:
    import os

    if int(os.environ.get("RANK", "0")) == 0:
        shown = {k: v for k, v in result.items() if k.endswith(("_start", "_end")) or k in ("steps", "seconds_per_step")}
        print(f"{name}: {json.dumps(shown, sort_keys=True)} -> {out}")
    return 0


def cmd_train_rm(args) -> int:
    from rlaif.train.common import build_config
    from rlaif.train.reward_model import RewardConfig, train_reward_model

    cfg = build_config(RewardConfig, args.config, {**_train_fields(args), "prefs": args.prefs, "base": args.base,
                                                   "human_eval_file": args.human_eval_file, "margin": args.margin,
                                                   "margin_from_strength": args.margin_from_strength}, args.set)
    return _train_done("train-rm", train_reward_model(cfg), cfg.output_dir)


def cmd_dpo(args) -> int:
    from rlaif.train.common import build_config
    from rlaif.train.dpo import DPOConfig, train_dpo

    fields = {**_train_fields(args), "prefs": args.prefs, "policy": args.policy, "reference": args.reference,
              "loss": args.loss, "simpo_gamma": args.simpo_gamma, "cpo_alpha": args.cpo_alpha,
              "beta": args.beta, "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r} if args.lora_r else None}
    if args.hard_labels:
        fields["soft_labels"] = False
    cfg = build_config(DPOConfig, args.config, fields, args.set)
    return _train_done(f"dpo ({cfg.loss})", train_dpo(cfg), cfg.output_dir)


def cmd_orpo(args) -> int:
    from rlaif.train.common import build_config
    from rlaif.train.orpo import ORPOConfig, train_orpo

    fields = {**_train_fields(args), "prefs": args.prefs, "policy": args.policy, "beta": args.beta,
              "sft_on": args.sft_on, "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r} if args.lora_r else None}
    if args.hard_labels:
        fields["soft_labels"] = False
    cfg = build_config(ORPOConfig, args.config, fields, args.set)
    return _train_done("orpo", train_orpo(cfg), cfg.output_dir)


def cmd_sft(args) -> int:
    from rlaif.train.common import build_config
    from rlaif.train.sft import SFTConfig, train_sft

    cfg = build_config(SFTConfig, args.config, {**_train_fields(args), "data": args.data, "policy": args.policy,
                                                "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r}
                                                if args.lora_r else None}, args.set)
    return _train_done("sft", train_sft(cfg), cfg.output_dir)


def cmd_kto(args) -> int:
    from rlaif.train.common import build_config
    from rlaif.train.kto import KTOConfig, train_kto

    cfg = build_config(KTOConfig, args.config, {
        **_train_fields(args), "data": args.data, "policy": args.policy, "reference": args.reference,
        "data_format": args.format,
        "score_threshold": args.threshold, "pair_margin": args.pair_margin, "beta": args.beta,
        "desirable_weight": args.desirable_weight, "undesirable_weight": args.undesirable_weight,
        "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r} if args.lora_r else None}, args.set)
    return _train_done("kto", train_kto(cfg), cfg.output_dir)


def cmd_ppo(args) -> int:
    from rlaif.train.common import build_config
    from rlaif.train.ppo import PPOConfig, train_ppo

    cfg = build_config(PPOConfig, args.config, {
        **_train_fields(args), "prompts": args.prompts, "policy": args.policy, "reward": args.reward,
        "kl_coef": args.kl_coef, "max_new_tokens": args.max_new_tokens, "mini_batch_size": args.mini_batch_size,
        "ppo_epochs": args.ppo_epochs, "judge": args.judge,
        "constitution": args.constitution}, args.set)
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


def cmd_grpo(args) -> int:
    from rlaif.train.common import build_config
    from rlaif.train.grpo import GRPOConfig
    from rlaif.train.grpo_loop import train_grpo

    weights = {}
    for item in args.reward_weight:
        name, sep, w = item.partition("=")
        try:
            weights[name] = float(w) if sep else None
        except ValueError:
            weights[name] = None
        if weights[name] is None:
            raise UserError(f"--reward-weight {item!r}: expected NAME=NUMBER")
    cfg = build_config(GRPOConfig, args.config, {
        **_train_fields(args), "prompts": args.prompts, "policy": args.policy, "judge": args.judge,
        "constitution": args.constitution, "rewards": [grpo_reward(r) for r in args.reward] or None,
        "reward_weights": weights or None, "num_generations": args.num_generations, "advantage": args.advantage,
        "loss_type": args.loss_type, "beta": args.beta, "num_iterations": args.num_iterations,
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature}, args.set)
    return _train_done(f"grpo ({cfg.advantage})", train_grpo(cfg), cfg.output_dir)


def cmd_plot_reward_kl(args) -> int:
    from rlaif.train.plots import plot_reward_vs_kl_runs, read_log

    runs = {}
    for d in args.runs:
        log, summary = Path(d) / "train_log.jsonl", Path(d) / "summary.json"
        if not log.is_file():
            raise UserError(f"{d}: no train_log.jsonl; expected a PPO output folder")
        reward = json.loads(summary.read_text()).get("reward", "?") if summary.is_file() else "?"
        runs[f"{Path(d).name} ({reward})"] = read_log(log)
    print(f"plot-reward-kl: {len(runs)} runs -> {plot_reward_vs_kl_runs(runs, args.out, title=args.title)}")
    return 0


def cmd_best_of_n(args) -> int:
    from rlaif.backends import load_engine
    from rlaif.prompts_io import read_prompts
    from rlaif.train.best_of_n import BestOfNConfig, run_best_of_n
    from rlaif.train.rewards import reward_fn_from_spec

    cfg = BestOfNConfig(n=args.n, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
                        batch_size=args.batch_size)
    prompts = read_prompts(args.prompts)
    reward_fn = reward_fn_from_spec(args.reward, judge=args.judge or args.model,
                                    constitution=args.constitution, prompt_records=prompts)
    engine = load_engine(engine_config(args))
    try:
        summary = run_best_of_n(prompts, engine, reward_fn, cfg, args.out, overwrite=args.overwrite)
    finally:
        engine.close()
    print(f"best-of-{cfg.n}: {json.dumps(summary, sort_keys=True)} -> {Path(args.out) / 'best_of_n.jsonl'}")
    return 1 if summary.get("failed") else 0


def cmd_combine_rm(args) -> int:
    from rlaif.train.reward_combine import build_combination

    cfg = build_combination(args.helpful, args.harmless, args.calibration, args.out, threshold=args.threshold,
                            unsafe_categories=args.unsafe_category, unsafe_prompts=args.unsafe_prompts,
                            device=args.device)
    print(f"combine-rm: helpful mean {cfg.helpful_whitening.mean:.4f} std {cfg.helpful_whitening.std:.4f}, "
          f"harmless mean {cfg.harmless_whitening.mean:.4f} std {cfg.harmless_whitening.std:.4f} "
          f"(n={cfg.helpful_whitening.n}), threshold {cfg.threshold} -> {args.out}; use --reward combined:{args.out}")
    return 0


def cmd_train_rm_ensemble(args) -> int:
    from rlaif.train.common import build_config
    from rlaif.train.reward_ensemble import check_k, train_ensemble
    from rlaif.train.reward_model import RewardConfig

    check_k(args.k)
    cfg = build_config(RewardConfig, args.config, {**_train_fields(args), "prefs": args.prefs, "base": args.base,
                                                   "margin_from_strength": args.margin_from_strength}, args.set)
    summary = train_ensemble(cfg, args.k, mode="min" if args.min else "mean-std", lambda_std=args.lambda_std)
    print(f"train-rm-ensemble: {json.dumps(summary, sort_keys=True)} -> {cfg.output_dir}; "
          f"use --reward ensemble:{cfg.output_dir}")
    return 0


def cmd_rs_ft(args) -> int:
    from rlaif.backends import load_engine
    from rlaif.prompts_io import read_prompts
    from rlaif.train.best_of_n import BestOfNConfig
    from rlaif.train.common import build_config
    from rlaif.train.rewards import reward_fn_from_spec
    from rlaif.train.rejection_sampling import finetune_on_best, sample_best
    from rlaif.train.sft import SFTConfig

    bon = BestOfNConfig(n=args.n, max_tokens=args.max_tokens, temperature=args.temperature,
                        seed=args.seed or 0, batch_size=args.sample_batch_size)
    sft_cfg = build_config(SFTConfig, args.config, {**_train_fields(args), "policy": args.policy}, args.set)
    prompts = read_prompts(args.prompts)
    reward_fn = reward_fn_from_spec(args.reward, judge=args.judge or sft_cfg.policy,
                                    constitution=args.constitution, prompt_records=prompts)
    from rlaif.config import EngineConfig, parse_model_spec

    engine = load_engine(parse_model_spec(sft_cfg.policy, EngineConfig(device=args.device)))
    try:
        data, summary = sample_best(prompts, engine, reward_fn, bon, args.out, overwrite=args.overwrite)
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
    """Add the training commands to `rlaif`'s subcommands."""
    p = sub.add_parser("train-rm", help="train a reward model on (soft-label) preference pairs -> OUT/")
    p.add_argument("--prefs", required=True, help="preference JSONL: prompt, chosen, rejected, p_chosen")
    p.add_argument("--base", help="backbone model spec (default: embedded:smollm2-135m-instruct)")
    p.add_argument("--human-eval-file", help="human-labelled pairs (e.g. converted HH-RLHF) to report accuracy on")
    p.add_argument("--margin", type=float, help="margin m in the Bradley–Terry loss (default 0)")
    p.add_argument("--margin-from-strength", type=float, metavar="S",
                   help="add a margin S·|2p − 1| from each soft label's strength (Llama 2's graded margin)")
    _train_args(p, "output folder: an HF model dir + train_log.jsonl, summary.json, plots")
    p.set_defaults(func=cmd_train_rm)

    p = sub.add_parser("dpo", help="DPO / IPO on (soft-label) preference pairs -> OUT/")
    p.add_argument("--prefs", required=True, help="preference JSONL: prompt, chosen, rejected, p_chosen")
    p.add_argument("--policy", help="starting policy (and reference) spec (default: embedded:smollm2-135m-instruct)")
    p.add_argument("--reference", metavar="SPEC", help="another reference model with the policy's tokenizer, e.g. "
                   "the SFT start in iterative DPO (default: the starting policy)")
    p.add_argument("--loss", choices=["sigmoid", "ipo", "simpo", "cpo"],
                   help="sigmoid (DPO), ipo, or reference-free: simpo (length-normalised, margin γ), cpo (with an NLL term)")
    p.add_argument("--beta", type=positive(float))
    p.add_argument("--simpo-gamma", type=float, metavar="GAMMA", help="simpo: target margin γ (default 0.5)")
    p.add_argument("--cpo-alpha", type=float, metavar="ALPHA", help="cpo: weight α of the NLL term (default 1.0)")
    p.add_argument("--hard-labels", action="store_true", help="ignore p_chosen: every pair counts as p = 1")
    p.add_argument("--lora-r", type=positive(int), help="train LoRA adapters of this rank (needs peft)")
    _train_args(p, "output folder: the trained causal-LM dir + train_log.jsonl, summary.json, plots")
    p.set_defaults(func=cmd_dpo)

    p = sub.add_parser("orpo", help="ORPO: SFT on the chosen replies plus an odds-ratio preference term, no "
                       "reference model, on (soft-label) preference pairs -> OUT/")
    p.add_argument("--prefs", required=True, help="preference JSONL: prompt, chosen, rejected, p_chosen")
    p.add_argument("--policy", help="starting policy spec (default: embedded:smollm2-135m-instruct)")
    p.add_argument("--beta", type=positive(float), help="λ, the weight of the odds-ratio term (default 0.1)")
    p.add_argument("--sft-on", choices=["completion", "all"],
                   help="the SFT term's tokens: the reply's (default) or the prompt's too (as TRL)")
    p.add_argument("--hard-labels", action="store_true", help="ignore p_chosen: every pair counts as p = 1")
    p.add_argument("--lora-r", type=positive(int), help="train LoRA adapters of this rank (needs peft)")
    _train_args(p, "output folder: the trained causal-LM dir + train_log.jsonl, summary.json, plots")
    p.set_defaults(func=cmd_orpo)

    p = sub.add_parser("sft", help="SL-CAI: supervised fine-tuning on prompt/completion records (loss on the "
                       "completion only), e.g. critique/sl_cai.jsonl -> OUT/")
    p.add_argument("--data", required=True, help="prompt/completion JSONL (TRL shape; critique writes sl_cai.jsonl)")
    p.add_argument("--policy", help="starting model spec (default: embedded:smollm2-135m-instruct)")
    p.add_argument("--lora-r", type=positive(int), help="train LoRA adapters of this rank (needs peft)")
    _train_args(p, "output folder: the fine-tuned causal-LM dir + train_log.jsonl, summary.json, plots")
    p.set_defaults(func=cmd_sft)

    p = sub.add_parser("kto", help="KTO on binary desirable/undesirable feedback (unpaired labels, direct "
                       "scores with a threshold, or the sides of preference pairs) -> OUT/")
    p.add_argument("--data", required=True, help="JSONL: prompt/completion/label, prompt/completion/score, or "
                   "preference pairs (chosen -> desirable, rejected -> undesirable)")
    p.add_argument("--policy", help="starting policy (and reference) spec (default: embedded:smollm2-135m-instruct)")
    p.add_argument("--reference", metavar="SPEC", help="another reference model with the policy's tokenizer "
                   "(default: the starting policy)")
    p.add_argument("--format", choices=["auto", "unpaired", "scores", "pairs"], help="input shape (default: auto)")
    p.add_argument("--threshold", type=float, help="scores: desirable when score >= this (default 0.5)")
    p.add_argument("--pair-margin", type=float, help="pairs: use only pairs with |p_chosen - 0.5| above this")
    p.add_argument("--beta", type=positive(float))
    p.add_argument("--desirable-weight", type=positive(float), help="λ_D (default 1)")
    p.add_argument("--undesirable-weight", type=positive(float), help="λ_U (default 1)")
    p.add_argument("--lora-r", type=positive(int), help="train LoRA adapters of this rank (needs peft)")
    _train_args(p, "output folder: the trained causal-LM dir + train_log.jsonl, summary.json, plots")
    p.set_defaults(func=cmd_kto)

    p = sub.add_parser("ppo", help="PPO against a reward model or the labeler's direct score -> OUT/")
    p.add_argument("--prompts", required=True, help="prompt JSONL ('prompt': text or chat messages)")
    p.add_argument("--policy", help="starting policy (and frozen reference) spec")
    p.add_argument("--reward", required=True, help="rm:DIR (a train-rm output) or labeler:direct")
    p.add_argument("--judge", "--labeler-model", dest="judge", metavar="SPEC",
                   help="labeler:direct: the judge's model spec (default: the policy, which then judges itself)")
    p.add_argument("--constitution", help="labeler:direct: constitution file or name")
    p.add_argument("--kl-coef", type=float, help="β of the per-token KL penalty (default 0.05)")
    p.add_argument("--max-new-tokens", type=positive(int))
    p.add_argument("--mini-batch-size", type=positive(int))
    p.add_argument("--ppo-epochs", type=positive(int))
    _train_args(p, "output folder: policy dir, value_head.safetensors, train_log.jsonl, reward_vs_kl.png")
    p.set_defaults(func=cmd_ppo)

    p = sub.add_parser("grpo", help="GRPO / RLOO / Dr. GRPO: G replies per prompt, the group as baseline, rewards "
                       "from the judge, reward models and rules (weighted) -> OUT/")
    p.add_argument("--prompts", required=True, help="prompt JSONL ('prompt': text or chat messages)")
    p.add_argument("--policy", help="starting policy (and reference) spec")
    p.add_argument("--reward", action="append", default=[], metavar="SPEC",
                   help="repeatable: labeler:direct, judge:pairwise, judge:pairwise-reference, rule:MODULE:FUNCTION, "
                   "rm:DIR, ensemble:..., combined:FILE (default: labeler:direct)")
    p.add_argument("--reward-weight", action="append", default=[], metavar="NAME=W",
                   help="weight of a configured reward (names: judge_direct, judge_pairwise, the rule's function, "
                   "rm/ensemble/combined)")
    p.add_argument("--judge", "--labeler-model", dest="judge", metavar="SPEC",
                   help="judge rewards: the judge's model spec, e.g. openai:MODEL (default: the policy)")
    p.add_argument("--constitution", help="judge rewards: constitution file or name")
    p.add_argument("--num-generations", type=positive(int), help="G, replies per prompt (default 4)")
    p.add_argument("--advantage", choices=["grpo", "rloo", "dr_grpo"])
    p.add_argument("--loss-type", choices=["grpo", "bnpo", "dr_grpo"])
    p.add_argument("--beta", type=float, help="KL coefficient (default 0: no reference model)")
    p.add_argument("--num-iterations", type=positive(int), help="μ, optimisation passes per generation batch")
    p.add_argument("--max-new-tokens", type=positive(int))
    p.add_argument("--temperature", type=positive(float))
    _train_args(p, "output folder: policy dir, train_log.jsonl, reward_failures.jsonl, train_curves.png")
    p.set_defaults(func=cmd_grpo)

    p = sub.add_parser("plot-reward-kl", help="several PPO runs (e.g. a single RM and an RM ensemble) on one "
                       "reward-vs-KL plot -> PNG")
    p.add_argument("runs", nargs="+", help="PPO output folders")
    p.add_argument("--out", required=True, type=Path, help="the PNG to write")
    p.add_argument("--title", default="reward vs KL: single RM vs ensemble")
    p.set_defaults(func=cmd_plot_reward_kl)

    p = sub.add_parser("best-of-n", help="sample N responses per prompt, keep the best by reward -> OUT/best_of_n.jsonl")
    p.add_argument("--prompts", required=True, help="JSONL with a 'prompt' field, or text, one per line")
    p.add_argument("--reward", required=True, help="rm:DIR (a train-rm output) or labeler:direct")
    p.add_argument("--judge", "--labeler-model", dest="judge", metavar="SPEC",
                   help="labeler:direct: the judge's model spec (default: the policy, which then judges itself)")
    p.add_argument("--constitution", help="labeler:direct: constitution file or name")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--n", type=positive(int), default=4, help="samples per prompt")
    p.add_argument("--max-tokens", type=positive(int), default=128)
    p.add_argument("--temperature", type=positive(float), default=0.8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true", help="start over instead of resuming")
    engine_args(p)
    p.set_defaults(func=cmd_best_of_n)

    p = sub.add_parser("combine-rm", help="helpful + harmless reward models combined the Llama 2 way (harmless "
                       "score on unsafe prompts or below a threshold), whitened on a calibration set -> FILE.yaml")
    p.add_argument("--helpful", required=True, help="helpful reward-model folder (train-rm output)")
    p.add_argument("--harmless", required=True, help="harmless reward-model folder (train-rm output)")
    p.add_argument("--calibration", required=True, help="JSONL of prompt + candidates (every one counts, e.g. "
                   "best_of_n.jsonl), response, or chosen/rejected that the whitening mean/std are measured on")
    p.add_argument("--out", required=True, type=Path, help="the combination file to write (YAML)")
    p.add_argument("--threshold", type=float, default=-1.0,
                   help="use the harmless score below this whitened value (default: %(default)s)")
    p.add_argument("--unsafe-category", action="append", default=[], metavar="NAME",
                   help="prompts whose 'category' is NAME count as unsafe (repeatable); 'unsafe: true' always does")
    p.add_argument("--unsafe-prompts", help="a prompt file whose flagged records count as unsafe wherever used")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_combine_rm)

    p = sub.add_parser("train-rm-ensemble", help="K reward models on seeded bootstrap resamples of the "
                       "preferences -> OUT/member_*/ and OUT/ensemble.yaml (use --reward ensemble:OUT)")
    p.add_argument("--prefs", required=True, help="preference JSONL: prompt, chosen, rejected, p_chosen")
    p.add_argument("--k", type=int, default=4, help="number of members, at least 2 (default: %(default)s)")
    p.add_argument("--lambda-std", type=float, default=1.0,
                   help="R = mean − λ_std·std of the centred members (default: %(default)s)")
    p.add_argument("--min", action="store_true", help="R = min over the members instead of mean − λ·std")
    p.add_argument("--base", help="backbone model spec (default: embedded:smollm2-135m-instruct)")
    p.add_argument("--margin-from-strength", type=float, metavar="S", help="margin S·|2p − 1| (see train-rm)")
    _train_args(p, "output folder: member_0..member_{K-1} reward-model dirs and ensemble.yaml")
    p.set_defaults(func=cmd_train_rm_ensemble)

    p = sub.add_parser("rs-ft", aliases=["rejection-sampling"], help="rejection-sampling fine-tuning: sample K "
                       "responses per prompt, keep the best by a reward, SFT the policy on them -> OUT/")
    p.add_argument("--prompts", required=True, help="JSONL with a 'prompt' field, or text, one per line")
    p.add_argument("--reward", required=True, help="rm:DIR, combined:FILE, ensemble:DIR|DIR1,DIR2,..., or "
                   "labeler:direct")
    p.add_argument("--policy", help="the policy that samples and is fine-tuned (default: "
                   "embedded:smollm2-135m-instruct)")
    p.add_argument("--judge", "--labeler-model", dest="judge", metavar="SPEC",
                   help="labeler:direct: the judge's model spec (default: the policy)")
    p.add_argument("--constitution", help="labeler:direct: constitution file or name")
    p.add_argument("--n", type=positive(int), default=4, help="samples per prompt, K (default: %(default)s)")
    p.add_argument("--max-tokens", type=positive(int), default=128)
    p.add_argument("--temperature", type=positive(float), default=0.8)
    p.add_argument("--sample-batch-size", type=positive(int), default=8, help="prompts per sampling call")
    p.add_argument("--device", default="auto", help="sampling engine: auto, cpu, cuda, cuda:N")
    p.add_argument("--overwrite", action="store_true", help="sample again instead of resuming")
    _train_args(p, "output folder: samples/best_of_n.jsonl, rs_data.jsonl and the fine-tuned model")
    p.set_defaults(func=cmd_rs_ft)
