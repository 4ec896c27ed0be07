"""Best-of-N (rejection sampling): sample N responses per prompt from any engine, score them with a
reward function (a saved reward model, or the labeler's direct score), keep the best.

It is a stage (`make_process` → `rlaif.runner.run_stage`, resumable like every other stage) and a
baseline for PPO/DPO: the summary reports the mean score of the best of N next to the mean score
of one sample (N = 1, the starting policy), and the analytic KL of best-of-N to the base policy,
`log N − (N − 1)/N` (Stiennon et al. 2020; Beirami et al. 2024 show it is an upper bound), so it
sits on the same reward-vs-KL plot as PPO.

Each output record: `prompt`, `response` (the best), `score`, `candidates`, `scores`, `n`,
`principles` (the principle ids the judge scored every candidate under, for a direct-RLAIF reward;
None for a reward model), plus `chosen`/`rejected` (best and worst, TRL conversational) for iterated
DPO. The candidates of one prompt must be scored under one question, or best-of-N would compare
scores on different scales: a reward function that says otherwise is refused.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from pydantic import Field

from rlaif.backends.base import Engine, GenerationRequest
from rlaif.config import Strict
from rlaif.errors import UserError
from rlaif.records import record_id

RewardFn = Callable[[Sequence[list[dict]], Sequence[str]], Sequence[float]]


class BestOfNConfig(Strict):
    n: int = Field(4, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_tokens: int = Field(128, ge=1)
    seed: int = 0
    batch_size: int = Field(8, ge=1, description="prompts per engine call")


def kl_best_of_n(n: int) -> float:
    """KL(best-of-n ‖ base) = log n − (n − 1)/n (an upper bound; exact for continuous rewards)."""
    return math.log(n) - (n - 1) / n


def expand(prompts: Sequence[dict], model: str, cfg: BestOfNConfig) -> list[dict]:
    """Prompt records (`prompt` as messages; optional `id`) -> work items with ids and seeds."""
    params = cfg.model_dump(exclude={"batch_size"})
    items = []
    for p in prompts:
        rid = record_id("best-of-n", p["prompt"], model, params)
        items.append({"id": rid, "prompt": p["prompt"], "prompt_id": p.get("id", rid),
                      "seed": int(rid[:8], 16) ^ cfg.seed})
    return items


def score_candidates(reward_fn: RewardFn, prompts: Sequence[list[dict]], texts: Sequence[str]
                     ) -> tuple[list[float], list[list[str]] | None]:
    """Scores, and the principles behind each where the reward function says (`reward_fn.detailed`,
    the labeler's direct reward); None for a reward model."""
    detailed = getattr(reward_fn, "detailed", None)
    if detailed is None:
        return [float(s) for s in reward_fn(prompts, texts)], None
    rows = detailed(prompts, texts)
    return [float(r["score"]) for r in rows], [list(r["principles"]) for r in rows]


def make_process(engine: Engine, reward_fn: RewardFn, cfg: BestOfNConfig):
    """The stage function: a batch of work items -> one best-of-N record each."""

    def process(batch: list[dict]) -> list[dict]:
        requests = [GenerationRequest(item["prompt"], temperature=cfg.temperature, top_p=cfg.top_p,
                                      max_tokens=cfg.max_tokens, n=cfg.n, seed=item["seed"])
                    for item in batch]
        completions = engine.generate(requests)
        prompts, texts = [], []
        for item, c in zip(batch, completions):
            if len(c.texts) != cfg.n:
                raise UserError(f"engine {engine.name} returned {len(c.texts)} samples for n={cfg.n}")
            prompts += [item["prompt"]] * cfg.n
            texts += list(c.texts)
        scores, principles = score_candidates(reward_fn, prompts, texts)
        out = []
        for k, item in enumerate(batch):
            cand, sc = texts[k * cfg.n:(k + 1) * cfg.n], scores[k * cfg.n:(k + 1) * cfg.n]
            used = principles[k * cfg.n:(k + 1) * cfg.n] if principles else [None]
            if any(p != used[0] for p in used):
                raise RuntimeError(f"best-of-N: the candidates of prompt {item['prompt_id']} were scored under "
                                   f"different principles {used}; they must share one question")
            best = max(range(cfg.n), key=lambda i: sc[i])  # first of equals: deterministic
            worst = min(range(cfg.n), key=lambda i: sc[i])
            out.append({"id": item["id"], "prompt_id": item["prompt_id"], "prompt": item["prompt"],
                        "response": cand[best], "score": sc[best], "candidates": cand, "scores": sc,
                        "n": cfg.n, "model": engine.model, "principles": used[0],
                        "chosen": [{"role": "assistant", "content": cand[best]}],
                        "rejected": [{"role": "assistant", "content": cand[worst]}]})
        return out

    return process


def best_of_n(prompts: Sequence[dict], engine: Engine, reward_fn: RewardFn, cfg: BestOfNConfig) -> list[dict]:
    """In memory, no files: best-of-N records for prompt records (`prompt` as chat messages)."""
    items = expand(prompts, engine.model, cfg)
    process = make_process(engine, reward_fn, cfg)
    out = []
    for i in range(0, len(items), cfg.batch_size):
        out += process(items[i:i + cfg.batch_size])
    return out


def baseline_summary(records: Sequence[dict]) -> dict:
    """Mean best score vs mean single-sample score (the first sample: an unbiased N = 1 draw)."""
    if not records:
        return {"prompts": 0}
    n = records[0]["n"]
    best = [r["score"] for r in records]
    first = [r["scores"][0] for r in records]
    every = [s for r in records for s in r["scores"]]
    return {"prompts": len(records), "n": n,
            "mean_best_score": sum(best) / len(best),
            "mean_single_sample_score": sum(first) / len(first),
            "mean_sample_score": sum(every) / len(every),
            "gain_over_single_sample": sum(best) / len(best) - sum(every) / len(every),
            "kl_bound": kl_best_of_n(n)}


def run_best_of_n(prompts: Sequence[dict], engine: Engine, reward_fn: RewardFn, cfg: BestOfNConfig,
                  out_dir: str | Path, *, overwrite: bool = False, progress: bool = True) -> dict:
    """Resumable run into `out_dir/best_of_n.jsonl` (+ manifest); returns the baseline summary."""
    from rlaif.runner import run_stage
    from rlaif.train.run_log import write_json

    items = expand(prompts, engine.model, cfg)
    result = run_stage("best-of-n", items, make_process(engine, reward_fn, cfg), out_dir, config=cfg,
                       batch_size=cfg.batch_size, output="best_of_n.jsonl", overwrite=overwrite,
                       progress=progress)
    summ = {**baseline_summary(result.records), "failed": result.failed}
    write_json(Path(out_dir) / "best_of_n_summary.json", summ)
    return summ
