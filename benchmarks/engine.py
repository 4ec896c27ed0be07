"""The transformers engine against itself and against the hardware.

1. Generation: the engine's batched `generate` (length-sorted, left-padded) vs the same requests one
   at a time — same prompts, greedy, same max_tokens. Tokens/s counts generated tokens.
2. Roofline: the machine's fp32 matmul GFLOP/s, measured here, against achieved FLOP/s =
   tokens/s × 2 × N, with N the parameters that do matmul work per token (the embedding lookup is
   not a matmul; the LM head runs for every token only in decode — `option_logprobs` keeps the
   logits of the last position only). Attention score/value FLOPs are left out, so the fraction is a
   lower bound. Prefill-heavy work: `option_logprobs` on the labeler's long prompts.
3. `option_logprobs` (rendering, tokenising, sorting, padding, forward, log-softmax, option read-out)
   vs the raw model doing the same forward passes on pre-tokenised ids (no API around it).
"""

from __future__ import annotations

import torch

from benchmarks.common import Report, header, matmul_gflops, param_counts, red_team_prompts, side_by_side
from rlaif.backends.base import GenerationRequest, OptionRequest


def labeler_requests(pairs: list[dict]) -> list[OptionRequest]:
    """The labeler's own option requests for these pairs (both orders), rendered by its template."""
    from rlaif.judge import conversation_text, cut, sanitize
    from rlaif.templates import load_template

    t = load_template("label_pairwise")
    q = "Which of these assistant replies is less harmful?"
    reqs = []
    for p in pairs:
        conv = conversation_text(p["prompt"], 3000)
        a, b = sanitize(cut(p["a"].strip(), 1500)), sanitize(cut(p["b"].strip(), 1500))
        for first, second in ((a, b), (b, a)):
            v = {"examples": "", "conversation": conv, "response_a": first, "response_b": second, "question": q}
            reqs.append(OptionRequest(t.render(**v), t.render_prefill(**v)))
    return reqs


@torch.inference_mode()
def raw_option_forwards(engine, batches: list[tuple[torch.Tensor, torch.Tensor]], option_ids: list[list[int]]):
    """The bare forward passes: padded id tensors in, per-row option log-probs out."""
    out = []
    for ids, mask in batches:
        logits = engine.net(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1, :]
        logp = torch.log_softmax(logits.float(), dim=-1)
        out.append(torch.stack([torch.logsumexp(logp[:, o], dim=-1) for o in option_ids], -1))
    return out


def pretokenized_batches(engine, requests: list[OptionRequest]) -> tuple[list, int, list[int]]:
    """Tokenise once (outside any timing) and cut the engine's own batches (`prefill_batches`:
    longest first, within `batch_size` rows and the prefill token budget), left-padded.
    -> (batches, prompt tokens, request index of each batch row in order)."""
    enc = [engine._prompt_ids(r.messages, r.prefill) for r in requests]
    chunks = engine.prefill_batches([len(e) for e in enc])
    batches = [engine._pad_left([enc[i] for i in chunk]) for chunk in chunks]
    return batches, sum(len(e) for e in enc), [i for chunk in chunks for i in chunk]


def run(engine, report: Report, sizes: dict, peak: dict) -> dict:
    params = param_counts(engine.net)
    report.details["params"] = params
    out = {}

    # ---- 1. generation, batched vs one by one
    header(f"generation: batched engine vs one by one ({sizes['gen_prompts']} prompts, "
           f"{sizes['gen_tokens']} new tokens, greedy, batch_size {engine.cfg.batch_size})")
    reqs = [GenerationRequest(m, temperature=0.0, max_tokens=sizes["gen_tokens"])
            for m in red_team_prompts(sizes["gen_prompts"])]

    def batched():
        return engine.generate(reqs)

    def one_by_one():
        return [engine.generate([r])[0] for r in reqs]

    res = side_by_side({"batched": batched, "one_by_one": one_by_one}, repeats=sizes["repeats"], warmup=False)
    tok = {k: sum(c.completion_tokens for c in v["out"]) for k, v in res.items()}
    prompt_tok = sum(c.prompt_tokens for c in res["batched"]["out"])
    tps = {k: tok[k] / res[k]["best"] for k in res}
    report.add("generation", "batched tokens/s", tps["batched"], "tok/s")
    report.add("generation", "one-by-one tokens/s", tps["one_by_one"], "tok/s")
    ratio = tps["batched"] / tps["one_by_one"]
    report.add("generation", "batched / one-by-one", ratio, "x", "≥ 5x", ratio >= 5)
    # decode roofline: every generated token runs the whole body and the LM head
    flops = (tok["batched"] * 2 * params["per_token_decode"] + prompt_tok * 2 * params["per_token_prefill"])
    frac = flops / res["batched"]["best"] / (peak["best_gflops"] * 1e9)
    report.add("generation", "decode-dominated FLOP/s / matmul peak (batched)", 100 * frac, "%",
               note=f"{flops / res['batched']['best'] / 1e9:.1f} GFLOP/s")
    out["generation"] = {"tokens": tok, "prompt_tokens": prompt_tok,
                         "best_s": {k: v["best"] for k, v in res.items()},
                         "times": {k: v["times"] for k, v in res.items()}}

    # ---- what the engine's batch size buys (same prompts, batched only)
    for bs in sizes.get("gen_batch_sweep", []):
        engine.cfg = engine.cfg.model_copy(update={"batch_size": bs})
        r = side_by_side({"b": batched}, repeats=1, warmup=False)["b"]
        n = sum(c.completion_tokens for c in r["out"])
        report.add("generation", f"batched tokens/s at batch_size {bs}", n / r["best"], "tok/s")
    engine.cfg = engine.cfg.model_copy(update={"batch_size": sizes["engine_batch"]})

    # ---- 2. prefill-heavy: option scoring on the labeler's prompts, against the matmul roof
    from benchmarks.common import hh_pairs

    pairs = hh_pairs(sizes["prefill_pairs"])
    oreqs = labeler_requests(pairs)
    header(f"prefill: option_logprobs on {len(oreqs)} labeler prompts vs raw forwards vs the fp32 matmul roof")
    batches, n_tokens, order = pretokenized_batches(engine, oreqs)
    option_ids = [engine.option_token_ids(o) for o in ("A", "B")]
    padded = sum(ids.numel() for ids, _ in batches)
    res = side_by_side({"api": lambda: engine.option_logprobs(oreqs, ["A", "B"]),
                        "raw": lambda: raw_option_forwards(engine, batches, option_ids)},
                       repeats=sizes["repeats"])
    # same numbers out of both
    raw_lp = torch.cat(res["raw"]["out"])
    api_lp = torch.tensor([[res["api"]["out"][i]["A"], res["api"]["out"][i]["B"]] for i in order])
    max_diff = (raw_lp - api_lp).abs().max().item()
    tps = {k: n_tokens / v["best"] for k, v in res.items()}
    report.add("prefill", "option_logprobs prompt tokens/s", tps["api"], "tok/s",
               note=f"{n_tokens / len(oreqs):.0f} tokens/prompt, {100 * (padded - n_tokens) / padded:.0f}% padding")
    report.add("prefill", "raw forward prompt tokens/s", tps["raw"], "tok/s")
    ratio = tps["api"] / tps["raw"]
    report.add("prefill", "option_logprobs API / raw forwards", ratio, "x", "≥ 0.9x", ratio >= 0.9,
               note=f"max |Δ logprob| {max_diff:.1e}")
    achieved = tps["api"] * 2 * params["per_token_prefill"]
    frac = achieved / (peak["best_gflops"] * 1e9)
    report.add("prefill", "achieved FLOP/s (2·N·tok/s), option_logprobs", achieved / 1e9, "GFLOP/s")
    report.add("prefill", "achieved / fp32 matmul peak", 100 * frac, "%", "≥ 50%", frac >= 0.5)
    # useful FLOPs only: padded positions are computed too
    report.add("prefill", "incl. padded positions / peak", 100 * frac * padded / n_tokens, "%")
    out["prefill"] = {"requests": len(oreqs), "tokens": n_tokens, "padded_tokens": padded,
                      "best_s": {k: v["best"] for k, v in res.items()}, "max_abs_diff": max_diff}
    return out
