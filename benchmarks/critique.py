"""Critique–revision chains per minute (SL-CAI through the runner), the responses stage's rate, and
the cost of a full `cai_harmless` run per 1000 prompts extrapolated from the stage rates measured in
this run:

    responses (1 per prompt, the pipeline's sampling settings)
  + critique–revision (one chain per response)
  + labeling (one debiased pair per prompt: original vs final revision)
  + DPO, one epoch over those pairs (measured step time × pairs / batch), when training ran
"""

from __future__ import annotations

import shutil
import tempfile
import time

from benchmarks.common import Report, header, red_team_prompts


def run(engine, report: Report, sizes: dict, rates: dict) -> dict:
    from rlaif.backends.base import GenerationRequest
    from rlaif.stages.critique_revision import CritiqueConfig, run_critique
    from rlaif.stages.responses import ResponsesConfig

    n = sizes["critique_chains"]
    full_settings = sizes["critique_rounds"] >= 2
    cfg = CritiqueConfig(rounds=sizes["critique_rounds"]) if full_settings else CritiqueConfig(
        rounds=sizes["critique_rounds"], critique_max_tokens=sizes["critique_tokens"],
        revision_max_tokens=sizes["critique_tokens"])
    rcfg = ResponsesConfig(max_tokens=96 if full_settings else sizes["critique_tokens"], temperature=0.7)
    header(f"critique-revision: {n} chains, {cfg.rounds} round(s), critique/revision max tokens "
           f"{cfg.critique_max_tokens}/{cfg.revision_max_tokens}; responses max_tokens {rcfg.max_tokens}")
    prompts = red_team_prompts(n)

    t = time.perf_counter()
    comps = engine.generate([GenerationRequest(m, temperature=rcfg.temperature, max_tokens=rcfg.max_tokens, seed=i)
                             for i, m in enumerate(prompts)])
    t_resp = time.perf_counter() - t
    responses = [{"prompt": m, "response": c.texts[0]} for m, c in zip(prompts, comps)]
    report.add("critique", "responses stage prompts/s", n / t_resp, "prompts/s",
               note=f"{sum(c.completion_tokens for c in comps) / t_resp:.1f} tok/s")

    out_dir = tempfile.mkdtemp(prefix="rlaif-bench-critique-")
    before = dict(engine.counters)
    try:
        t = time.perf_counter()
        summary = run_critique(responses, "harmless", engine, out_dir, config=cfg,
                               batch_size=engine.cfg.batch_size, progress=False)
        t_chain = time.perf_counter() - t
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    gen_tokens = engine.counters["completion_tokens"] - before["completion_tokens"]
    report.add("critique", f"chains per minute ({cfg.rounds} round(s))", 60 * n / t_chain, "chains/min",
               note=f"{gen_tokens / t_chain:.1f} generated tok/s; {summary.get('degenerate_revision_share', 0):.0%} "
                    "degenerate revisions")
    rates.update({"response_s_per_prompt": t_resp / n, "chain_s": t_chain / n, "chain_rounds": cfg.rounds,
                  "chain_settings": "pipeline defaults" if full_settings else "shortened (quick)"})
    return {"chains": n, "seconds": t_chain, "responses_seconds": t_resp, "generated_tokens": gen_tokens,
            "config": cfg.model_dump(), "summary": {k: v for k, v in summary.items() if k != "out_dir"}}


def cost_per_1000(report: Report, rates: dict) -> None:
    header("cost of a cai_harmless run per 1000 prompts, from the stage rates above")
    parts = {}
    if "response_s_per_prompt" in rates:
        parts["responses"] = 1000 * rates["response_s_per_prompt"]
    if "chain_s" in rates:
        parts["critique-revision"] = 1000 * rates["chain_s"]
    if "label_pairs_per_s" in rates:
        parts["labeling"] = 1000 / rates["label_pairs_per_s"]
    if "dpo_s_per_step" in rates:
        parts["dpo (1 epoch)"] = rates["dpo_s_per_step"] * 1000 / rates["dpo_batch"]
    for k, v in parts.items():
        report.add("cost/1000 prompts", f"{k}", v / 3600, "hours")
    total = sum(parts.values())
    report.add("cost/1000 prompts", "total (this machine, wall)", total / 3600, "hours",
               note=f"chains: {rates.get('chain_settings', '?')}")
    report.details["cost_per_1000_s"] = {**parts, "total": total}
