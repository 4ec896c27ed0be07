"""GRPO against our PPO on the same prompts and the same rule reward, on the embedded policy
(SmolLM2-135M, fp32, CPU): seconds per step, peak RSS, and reward gained per 1,000 sampled tokens.

Both sample the same number of replies a step (PPO: 8 prompts, one reply each; GRPO: 2 prompts ×
G = 4) of at most `grpo_tokens` new tokens at temperature 1, reward `rlaif.train.rewards:brevity`
(1 − words/40, floored at 0) on the helpful prompts with a "reply briefly" system turn, lr 1e-5, the
KL weight 0.02 (PPO's per-token penalty; GRPO's k3 term, so both keep a reference model). PPO also
trains a value head and does 2 epochs of 2 mini-batches (4 optimizer steps a step); GRPO does μ = 2
passes (2 optimizer steps). Each trainer runs in its own process, so peak RSS is its own.

    reward gained per 1k tokens = (mean reward of the last 2 steps − of the first 2) / (sampled tokens / 1000)

Step time: median over the steps after the first. One run each: the ratios are one measurement.

    python -m benchmarks.run --only grpo [--full]            (registered in benchmarks/run.py)
    python -m benchmarks.grpo --worker grpo|ppo --steps N --tokens T --out DIR   (one side)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

SYSTEM = "Reply briefly."
REPLIES_PER_STEP = 8
G = 4


def write_prompts(path: Path, n: int = 16) -> Path:
    from rlaif.prompts_io import read_prompts

    recs = read_prompts("helpful")[:n]
    path.write_text("".join(json.dumps({"prompt": [{"role": "system", "content": SYSTEM}, *r["prompt"]]}) + "\n"
                            for r in recs))
    return path


def worker(kind: str, prompts: str, steps: int, tokens: int, out: str) -> dict:
    from rlaif.train.rewards import brevity

    common = dict(policy="embedded:smollm2-135m-instruct", prompts=prompts, output_dir=out, seed=0, max_steps=steps,
                  learning_rate=1e-5, max_new_tokens=tokens, max_length=192, save=False, progress=False)
    started = time.time()
    if kind == "ppo":
        from rlaif.train.ppo import PPOConfig, train_ppo

        result = train_ppo(PPOConfig(**common, batch_size=REPLIES_PER_STEP, mini_batch_size=4, ppo_epochs=2,
                                     kl_coef=0.02), reward_fn=brevity)
    else:
        from rlaif.train.grpo import GRPOConfig
        from rlaif.train.grpo_loop import train_grpo

        result = train_grpo(GRPOConfig(**common, batch_size=REPLIES_PER_STEP // G, num_generations=G,
                                       num_iterations=2, beta=0.02), reward_fn=brevity)
    total = time.time() - started
    rows = [json.loads(line) for line in open(Path(out) / "train_log.jsonl")]
    if kind == "ppo":
        sampled = sum(r["response_length"] * REPLIES_PER_STEP for r in rows)
    else:
        sampled = rows[-1]["sampled_tokens"]
    return {"kind": kind, "step_s": [r["step_seconds"] for r in rows], "reward": [r["reward"] for r in rows],
            "sampled_tokens": sampled, "seconds": total, "summary_s_per_step": result["seconds_per_step"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def gained_per_1k(res: dict) -> float:
    r = res["reward"]
    k = 2 if len(r) >= 4 else 1
    return (sum(r[-k:]) / k - sum(r[:k]) / k) / (res["sampled_tokens"] / 1000)


def run(report, sizes: dict) -> dict:
    from benchmarks.common import header, python, run_json

    steps, tokens = sizes.get("grpo_steps", 4), sizes.get("grpo_tokens", 32)
    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-grpo-"))
    prompts = write_prompts(tmp / "prompts.jsonl")
    header(f"GRPO vs PPO: embedded policy, {REPLIES_PER_STEP} replies a step (GRPO 2 prompts × G={G}), "
           f"{steps} steps, ≤ {tokens} new tokens, rule reward brevity, each in its own process")
    res = {}
    for kind in ("ppo", "grpo"):
        res[kind] = run_json([python(), "-m", "benchmarks.grpo", "--worker", kind, "--prompts", str(prompts),
                              "--steps", str(steps), "--tokens", str(tokens), "--out", str(tmp / kind)], timeout=3600)
        if "error" in res[kind]:
            report.skip(f"grpo:{kind}", res[kind]["error"])
            return res
    step = {k: statistics.median(v["step_s"][1:] or v["step_s"]) for k, v in res.items()}
    gain = {k: gained_per_1k(v) for k, v in res.items()}
    for k in ("ppo", "grpo"):
        report.add("grpo", f"{k}: s/step (median after the first)", step[k], "s",
                   note=f"peak RSS {res[k]['peak_rss_mb']:.0f} MB, {res[k]['sampled_tokens']:.0f} sampled tokens, "
                        f"reward {res[k]['reward'][0]:.3f} -> {res[k]['reward'][-1]:.3f}")
        report.add("grpo", f"{k}: reward gained per 1k sampled tokens", gain[k], "")
    report.add("grpo", "GRPO / PPO step time", step["grpo"] / step["ppo"], "x")
    report.add("grpo", "GRPO / PPO peak RSS", res["grpo"]["peak_rss_mb"] / res["ppo"]["peak_rss_mb"], "x")
    if gain["ppo"] != 0:
        report.add("grpo", "GRPO / PPO reward gained per 1k sampled tokens", gain["grpo"] / gain["ppo"], "x",
                   note="one run each: noisy")
    return {"steps": steps, "tokens": tokens, "results": res, "step_s": step, "gain_per_1k": gain}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.grpo", description=__doc__.splitlines()[0])
    ap.add_argument("--worker", choices=["grpo", "ppo"], required=True)
    ap.add_argument("--prompts", required=True)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    print(json.dumps(worker(a.worker, a.prompts, a.steps, a.tokens, a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
