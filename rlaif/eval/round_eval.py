"""Each iterative round's policy on held-out prompts: how far it moved from the start, and what that
bought, in the numbers of Gao et al. 2023 ("Scaling laws for reward model overoptimization"):

- KL(π_k ‖ π_0), a sampled estimate: y ~ π_k at temperature 1 (top-p 1, at most `max_tokens`
  tokens, none of the sampling options a model's generation_config may set), KL ≈ mean over samples of log π_k(y|x) − log π_0(y|x). Unbiased for the KL between the
  two policies' distributions over the first `max_tokens` tokens; its standard error is reported.
  The log-probs are taken on the sampled text re-tokenised (the prompt built exactly as the engine
  builds it, the end-of-turn token counted when the sample stopped on its own), so a sample whose
  text re-tokenises differently is scored on the tokens a reader of the text would get.
- the proxy reward: the pipeline judge's direct score of those samples (0–1, the labeler's
  probability-weighted 1–10 score), what the rounds optimise;
- an independent judge's direct score of the same samples, when one is given: the gold standard
  the proxy is checked against (over-optimisation shows as the proxy rising while it falls).

Each number is a record stage (samples, log-probs, scores) in the checkpoint's eval folder, so an
evaluation resumes like any stage.
"""

from __future__ import annotations

import math
from pathlib import Path

from rlaif.backends.base import independent_requests
from rlaif.run_context import RunContext
from rlaif.runner import StageResult, run_stage


def direct_score_stage(samples: list[dict], judge, out: Path, stage: str, *, batch_size: int,
                       overwrite: bool = False) -> StageResult:
    """The judge's direct score of each sample -> out/<stage>.jsonl {id, prompt_id, score, principles}."""

    def process(batch: list[dict]) -> list[dict]:
        scores = judge.score_many([s["prompt"] for s in batch], [s["response"] for s in batch])
        return [{"id": s["id"], "prompt_id": s["prompt_id"], "score": d.value, "principles": d.principles}
                for s, d in zip(batch, scores)]

    return run_stage(stage, samples, process, out, config={"judge": judge.name, "constitution": judge.constitution.name,
                                                           "seed": judge.config.seed},
                     batch_size=batch_size, overwrite=overwrite, stats=getattr(judge.engine, "stats", None),
                     fixed_batches=not independent_requests(judge.engine))


class SampleScorer:
    """log p(sample | prompt) under one causal LM, the prompt built as the local engines build it,
    on `device` (an engine block's: auto, cpu, cuda, cuda:N). float32 by default: the KL is a
    difference of sums of log-probs, which bfloat16 rounding would swamp."""

    def __init__(self, model_spec: str, system_prompt: str | None = None, dtype: str = "float32",
                 device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM

        from rlaif.backends.transformers_engine import pick_device
        from rlaif.train.models import load_tokenizer, resolve, torch_dtype

        path = resolve(model_spec)
        self.torch = torch
        self.device = pick_device(device)
        self.tokenizer = load_tokenizer(path)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype)).to(self.device).eval()
        self.system_prompt = system_prompt

    def ids(self, sample: dict) -> tuple[list[int], int]:
        from rlaif.backends.local_prompts import prompt_text

        text = prompt_text(self.tokenizer, sample["prompt"], self.system_prompt)
        prompt = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        completion = self.tokenizer(sample["response"], add_special_tokens=False)["input_ids"]
        if sample.get("finish_reason") == "stop" and self.tokenizer.eos_token_id is not None:
            completion = completion + [self.tokenizer.eos_token_id]
        return prompt + completion, len(prompt)

    def __call__(self, batch: list[dict]) -> list[dict]:
        from rlaif.train.examples import pad, pad_id
        from rlaif.train.maths import sequence_logps

        torch = self.torch
        encoded = [self.ids(s) for s in batch]
        input_ids = pad([ids for ids, _ in encoded], pad_id(self.tokenizer))
        attention = pad([[1] * len(ids) for ids, _ in encoded], 0)
        mask = pad([[0] * n + [1] * (len(ids) - n) for ids, n in encoded], 0)
        input_ids, attention, mask = (t.to(self.device) for t in (input_ids, attention, mask))
        with torch.no_grad():
            logits = self.model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
            logps = sequence_logps(logits, input_ids, mask).cpu()
        return [{"id": s["id"], "logp": float(v), "tokens": len(ids) - n}
                for s, v, (ids, n) in zip(batch, logps.tolist(), encoded)]


def logp_stage(model_spec: str, samples: list[dict], out: Path, stage: str, *, system_prompt: str | None,
               batch_size: int, device: str = "cpu", overwrite: bool = False) -> dict[str, float]:
    """sample id -> log p(sample) under `model_spec` on `device` (out/<stage>.jsonl; the model loads
    only if something is left to score)."""
    held: dict = {}

    def process(batch: list[dict]) -> list[dict]:
        if "scorer" not in held:
            held["scorer"] = SampleScorer(model_spec, system_prompt, device=device)
        return held["scorer"](batch)

    try:
        result = run_stage(stage, samples, process, out, config={"model": model_spec, "system_prompt": system_prompt},
                           batch_size=batch_size, overwrite=overwrite)
    finally:
        held.clear()
    return {r["id"]: r["logp"] for r in result.records}


def kl_samples(engine, held_out: list[dict], out: Path, *, samples: int, max_tokens: int, seed: int,
               batch_size: int, overwrite: bool = False) -> StageResult:
    """`samples` draws per held-out prompt from the engine's model, at temperature 1 and top-p 1 and
    `pure` (no sampling option of the model's generation_config: a repetition penalty or a top-k
    there would bias the KL estimate) -> out/samples.jsonl."""
    from rlaif.stages.responses import ResponsesConfig, expand, make_process

    rc = ResponsesConfig(n=samples, max_tokens=max_tokens, temperature=1.0, top_p=1.0, seed=seed, pure=True)
    return run_stage("samples", expand(held_out, engine.model, rc), make_process(engine, rc), out, config=rc,
                     batch_size=batch_size, overwrite=overwrite, fixed_batches=not independent_requests(engine))


def mean_se(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, None
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def evaluate_checkpoint(rounds, name: str, model: str, held_out: list[dict], out: Path) -> dict:
    """KL to the start, proxy and independent rewards, mean words, for one checkpoint (`rounds`:
    rlaif.iterate.Rounds, which holds the pipeline, its engines and the start model)."""
    p: RunContext = rounds.p
    ev = rounds.cfg.eval
    engine = rounds.policy_engine(model)
    try:
        sampled = kl_samples(engine, held_out, out, samples=ev.samples, max_tokens=ev.max_tokens, seed=p.cfg.seed,
                             batch_size=p.batch_size("policy"), overwrite=p.overwrite)
    finally:
        engine.close()
    samples, failed = sampled.records, sampled.failed
    info: dict = {"eval_samples": len(samples),
                  "mean_words": (sum(len(s["response"].split()) for s in samples) / len(samples)) if samples else None}
    if model == rounds.start:
        info.update(kl=0.0, kl_se=0.0)
    else:
        policy = p.roles["policy"]
        common = dict(system_prompt=policy.system_prompt, batch_size=p.batch_size("policy"), device=policy.device,
                      overwrite=p.overwrite)
        mine = logp_stage(model, samples, out, "logp_policy", **common)
        ref = logp_stage(rounds.start, samples, out, "logp_start", **common)
        info["kl"], info["kl_se"] = mean_se([mine[i] - ref[i] for i in mine if i in ref])
    judge = p.judge()
    proxy = direct_score_stage(samples, judge, out, "judge_scores", batch_size=p.batch_size("judge"),
                               overwrite=p.overwrite)
    failed += proxy.failed
    info["reward"], info["reward_se"] = mean_se([r["score"] for r in proxy.records])
    if ev.independent_judge is not None:
        from rlaif.backends import load_engine
        from rlaif.judge import Judge

        other = load_engine(ev.independent_judge)
        try:  # the same questions, asked of another model
            gold = direct_score_stage(samples, Judge(other, judge.constitution, judge.config), out,
                                      "independent_scores", batch_size=ev.independent_judge.batch_size,
                                      overwrite=p.overwrite)
        finally:
            other.close()
        failed += gold.failed
        info["independent_reward"], info["independent_reward_se"] = mean_se([r["score"] for r in gold.records])
        info["independent_judge"] = f"{ev.independent_judge.kind}:{ev.independent_judge.model}"
    info["failed"] = failed
    return info


def plot_rounds(rows: list[dict], out: Path) -> Path:
    """Reward against KL to the start, one point per round (0 = the start), labelled; the
    independent judge's score on the same axes when there is one."""
    from rlaif.plotting import pyplot
    from rlaif.train.plots import save_reward_kl

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    series = [("reward", "proxy: the pipeline's judge", "C0")]
    if any(r.get("independent_reward") is not None for r in rows):
        series.append(("independent_reward", "independent judge", "C3"))
    for key, label, color in series:
        pts = [(r["kl"], r[key], r.get("kl_se") or 0.0, r.get(f"{key}_se") or 0.0, r["round"]) for r in rows
               if r.get("kl") is not None and r.get(key) is not None]
        if not pts:
            continue
        kl, reward, kl_se, r_se, k = zip(*pts)
        ax.errorbar(kl, reward, xerr=kl_se, yerr=r_se, marker="o", markersize=4, linewidth=1, capsize=2,
                    color=color, label=label)
        for x, y, n in zip(kl, reward, k):
            ax.annotate("start" if n == 0 else f"round {n}", (x, y), textcoords="offset points", xytext=(4, 4),
                        fontsize=7, color=color)
    ax.legend(fontsize=8)
    return save_reward_kl(plt, fig, ax, out, "direct score (0–1)", "reward vs KL to the start, across rounds",
                           kl_label="KL(policy ‖ start) per response (nats), sampled")
