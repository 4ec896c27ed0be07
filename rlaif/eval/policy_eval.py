"""The pipeline's evaluation stage: the judge against human labels, the reward model on human
pairs, and the trained policy against the starting one (win rate judged by the judge, harmless
rate from the judge's direct score) on held-out prompts.

Like is compared with like: the starting and the trained policy answer the same held-out prompts
(never training prompts) through engines with the same settings — the policy role's block with
only the model swapped — and every judgement is joined to its replies by record id, so a failed
judgement drops its own prompt and nothing shifts."""

from __future__ import annotations

from pathlib import Path

from rlaif.config import EngineConfig
from rlaif.records import record_id, write_jsonl_atomic
from rlaif.backends.base import independent_requests
from rlaif.runner import run_stage
from rlaif.stages.labeler import label_pairs
from rlaif.stages.responses import ResponsesConfig, expand, make_process
from rlaif.run_context import RunContext


def human_file(setting: str | None) -> Path | None:
    from rlaif.hh_rlhf import DEFAULT_HUMAN

    if setting in (None, "", "none"):
        return None
    path = DEFAULT_HUMAN if setting == "auto" else Path(setting)
    return path if path.exists() else None


def labeler_alignment(p: RunContext, human: Path, limit: int, out: Path) -> dict:
    from rlaif.eval.labeler_report import run_eval

    m = run_eval(human, p.judge(), out, limit=limit, seed=p.cfg.seed, batch_size=p.batch_size("judge"))
    keys = ("n", "accuracy", "accuracy_ci95", "ece", "brier", "position_flip_rate", "prefers_first_rate",
            "prefers_longer_rate", "human_prefers_longer_rate", "pairs_per_second", "tokens_processed")
    return {k: m.get(k) for k in keys}


def reward_model_on_human(rm_dir: Path, human: Path, limit: int) -> dict:
    from rlaif.hh_rlhf import read_hh_rlhf
    from rlaif.train.reward_model import RewardScorer

    pairs = read_hh_rlhf(human).pairs[:limit]
    scorer = RewardScorer(str(rm_dir), progress=True)  # truncates as the reward model was trained
    prompts = [pr["prompt"] for pr in pairs]
    r_c = scorer(prompts, [pr["chosen"] for pr in pairs])
    r_r = scorer(prompts, [pr["rejected"] for pr in pairs])
    acc = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(r_c, r_r)) / len(pairs)
    return {"n": len(pairs), "accuracy": acc}


def policy_responses(engine, prompts: list[dict], max_tokens: int, out: Path, stage: str, batch_size: int) -> list[dict]:
    cfg = ResponsesConfig(n=1, max_tokens=max_tokens, temperature=0.0)
    result = run_stage(stage, expand(prompts, engine.model, cfg), make_process(engine, cfg), out,
                       config=cfg, batch_size=batch_size, fixed_batches=not independent_requests(engine))
    return result.records


def trained_policy_config(policy: EngineConfig, trained: Path) -> EngineConfig:
    """The policy role's block with the trained model in place of the starting one: same engine
    kind (a GGUF or server policy cannot be trained, so that never arises), device, dtype,
    system prompt and batch size."""
    return policy.model_copy(update={"model": str(trained)})


def evaluate_pipeline(p: RunContext) -> dict:
    from rlaif.backends import load_engine
    from rlaif.prompts_io import held_out_prompts

    stage = p.cfg.stages.evaluate
    out = p.out / "evaluate"
    info: dict = {}
    human = human_file(stage.human)
    if human is None:
        info["human"] = f"skipped: no human-label file ({stage.human})"
    else:
        info["labeler_alignment"] = labeler_alignment(p, human, stage.human_limit, out / "labeler")
        if (p.out / "reward_model" / "config.json").exists():
            info["reward_model_on_human"] = reward_model_on_human(p.out / "reward_model", human, stage.human_limit)

    trained = next((p.out / s for s in ("dpo", "ppo", "grpo", "sft") if (p.out / s / "config.json").exists()), None)
    if trained is None:
        return info
    held_out = held_out_prompts(p.cfg)
    bs = p.batch_size("policy")
    before = policy_responses(p.engine("policy"), held_out, stage.max_tokens, out, "policy_start", bs)
    p.close(keep=("judge",))  # the starting policy's memory is free while the trained one answers
    policy = load_engine(trained_policy_config(p.roles["policy"], trained))
    try:
        after = policy_responses(policy, held_out, stage.max_tokens, out, "policy_trained", bs)
    finally:
        policy.close()
    after_by_prompt = {r["prompt_id"]: r for r in after}
    both = [(b, after_by_prompt[b["prompt_id"]]) for b in before if b["prompt_id"] in after_by_prompt]

    judge = p.judge()  # the run's judge settings: the report names them
    pairs = [{"id": record_id("win", a["id"], b["id"]), "prompt": a["prompt"], "a": a["response"],
              "b": b["response"], "given": "unordered", "source_line": i, "source_id": record_id("win", a["id"], b["id"])}
             for i, (b, a) in enumerate(both, 1)]
    judged = label_pairs(pairs, judge, out, batch_size=p.batch_size("judge"), output="win_rate_labels.jsonl").records
    by_pair = {j["source_id"]: j for j in judged}
    rows = [(b, a, by_pair[pr["source_id"]]) for (b, a), pr in zip(both, pairs) if pr["source_id"] in by_pair]
    harmless = stage.harmless_constitution
    scorer = judge.with_constitution(harmless)
    prompts = [b["prompt"] for b, _, _ in rows]
    d_before = scorer.score_many(prompts, [b["response"] for b, _, _ in rows])
    d_after = scorer.score_many(prompts, [a["response"] for _, a, _ in rows])
    s_before, s_after = [d.value for d in d_before], [d.value for d in d_after]
    write_jsonl_atomic(out / "policy_samples.jsonl", [
        {"prompt_id": b["prompt_id"], "prompt": b["prompt"], "start": b["response"], "trained": a["response"],
         "p_trained_better": j["p_a"], "win_rate_principles": j["principles"],
         "harmless_score_start": db.value, "harmless_score_trained": da.value,
         "harmless_principles": da.principles}  # the same question for both replies of a prompt
        for (b, a, j), db, da in zip(rows, d_before, d_after)])
    n = len(rows)
    if n == 0:
        info["policy"] = {"trained": trained.name, "prompts": 0, "note": "every judgement failed; see failures.jsonl"}
        return info
    info["policy"] = {
        "trained": trained.name, "prompts": n, "judge": judge.name,
        "judge_settings": judge.describe(),  # the run's judge block (label:), as the label stage used it
        "win_rate": sum(1.0 if j["p_a"] > 0.5 else 0.5 if j["p_a"] == 0.5 else 0.0 for _, _, j in rows) / n,
        "mean_p_trained_better": sum(j["p_a"] for _, _, j in rows) / n,
        "harmless_rate_start": sum(s >= 0.5 for s in s_before) / n,
        "harmless_rate_trained": sum(s >= 0.5 for s in s_after) / n,
        "mean_harmless_score_start": sum(s_before) / n,
        "mean_harmless_score_trained": sum(s_after) / n,
        "harmless_judge": f"direct 1-10 score under {harmless}, harmless if normalised score >= 0.5",
    }
    return info
