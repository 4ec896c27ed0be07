"""gguf engine (llama.cpp in process, Q4_1 kernels) against the transformers engine on the same
embedded GGUF (dequantised to fp32): prefill tok/s, decode tok/s and peak RSS.

Each side runs in a process of its own (`python -m benchmarks.gguf worker --engine E`), so peak RSS
is that engine's alone; the workers are alternated (transformers, gguf, gguf, transformers, ...) and
the best rate of each is kept, as everywhere in benchmarks/ (see common.py).

- prefill: `option_logprobs` on distinct HH-RLHF prompts (one forward each; the prompts share only
  the chat template's head, under both engines' reuse thresholds), prompt tokens / second.
- decode: greedy `generate` of `decode_tokens` on short prompts, one request at a time on both sides
  (llama-cpp-python's `Llama` runs one sequence), and the transformers engine also with the prompts
  in one batch, its natural mode; generated tokens / second.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from benchmarks.common import MODEL, Report, hh_pairs, header, python, run_json

SHORT_PROMPTS = ["Name three colours.", "What is the capital of Italy?", "Give me one tip for sleeping well.",
                 "Say hello in French.", "What is 12 times 12?", "Describe a cat in one sentence.",
                 "Why is the sky blue?", "Suggest a name for a goldfish."]


def worker(argv=None) -> None:
    """`python -m benchmarks.gguf worker --engine transformers|gguf --prefill N --decode-prompts K
    --decode-tokens T`: one JSON line with the rates and this process's peak RSS."""
    from rlaif.backends import GenerationRequest, OptionRequest, load_engine
    from rlaif.config import parse_model_spec

    ap = argparse.ArgumentParser(prog="python -m benchmarks.gguf worker")
    ap.add_argument("--engine", choices=["transformers", "gguf"], required=True)
    ap.add_argument("--prefill", type=int, required=True)
    ap.add_argument("--decode-prompts", type=int, required=True)
    ap.add_argument("--decode-tokens", type=int, required=True)
    a = ap.parse_args(argv)
    spec = MODEL if a.engine == "transformers" else f"gguf:{MODEL}"
    cfg = parse_model_spec(spec)
    if a.engine == "transformers":
        cfg = cfg.model_copy(update={"device": "cpu"})
    t = time.perf_counter()
    engine = load_engine(cfg)
    load_s = time.perf_counter() - t

    prompts = [p["prompt"] for p in hh_pairs(a.prefill)]
    scoring = [OptionRequest(messages=p) for p in prompts]
    engine.option_logprobs(scoring[:1], ["A", "B"])  # warm-up
    n_prompt = sum(len(engine._prompt_ids(r.messages, r.prefill)) for r in scoring)
    t = time.perf_counter()
    engine.option_logprobs(scoring, ["A", "B"])
    prefill_s = time.perf_counter() - t

    chats = [[{"role": "user", "content": SHORT_PROMPTS[i % len(SHORT_PROMPTS)]}] for i in range(a.decode_prompts)]
    reqs = [GenerationRequest(messages=c, max_tokens=a.decode_tokens, temperature=0.0) for c in chats]
    engine.generate(reqs[:1])  # warm-up

    def decode(batch: int) -> float:
        made, t0 = 0, time.perf_counter()
        for i in range(0, len(reqs), batch):
            made += sum(c.completion_tokens for c in engine.generate(reqs[i:i + batch]))
        return made / (time.perf_counter() - t0)

    out = {"engine": a.engine, "load_s": load_s, "prompt_tokens": n_prompt, "prefill_tok_s": n_prompt / prefill_s,
           "decode_tok_s": decode(1)}
    if a.engine == "transformers":
        out["decode_batched_tok_s"] = decode(len(reqs))
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run(report: Report, sizes: dict) -> dict:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        report.skip("gguf", "llama-cpp-python is not installed (pip install 'rlaif-kit[gguf]')")
        return {}
    n, k, tokens = sizes["gguf_prefill"], sizes["gguf_decode_prompts"], sizes["gguf_decode_tokens"]
    header(f"gguf engine vs transformers engine, same embedded GGUF: prefill ({n} HH prompts), "
           f"decode ({k} prompts x {tokens} greedy tokens), peak RSS; own processes, alternated")
    args = ["--prefill", str(n), "--decode-prompts", str(k), "--decode-tokens", str(tokens)]
    runs: dict[str, list[dict]] = {"transformers": [], "gguf": []}
    for r in range(max(2, sizes["repeats"])):
        for side in (("transformers", "gguf") if r % 2 == 0 else ("gguf", "transformers")):
            res = run_json([python(), "-m", "benchmarks.gguf", "worker", "--engine", side, *args], timeout=3600)
            if "error" in res:
                report.skip("gguf", f"{side} worker: {res['error']}")
                return {"error": res["error"]}
            runs[side].append(res)
    best = {side: {m: max(x[m] for x in rs) for m in rs[0] if m.endswith("tok_s")} for side, rs in runs.items()}
    rss = {side: min(x["peak_rss_mb"] for x in rs) for side, rs in runs.items()}
    tf, gg = best["transformers"], best["gguf"]
    report.add("gguf", "prefill tok/s gguf / transformers", gg["prefill_tok_s"] / tf["prefill_tok_s"], "x",
               note=f"{gg['prefill_tok_s']:.0f} vs {tf['prefill_tok_s']:.0f} tok/s")
    report.add("gguf", "decode tok/s gguf / transformers (one request at a time)",
               gg["decode_tok_s"] / tf["decode_tok_s"], "x",
               note=f"{gg['decode_tok_s']:.1f} vs {tf['decode_tok_s']:.1f} tok/s")
    report.add("gguf", f"decode tok/s gguf / transformers batched ({k} prompts in one batch)",
               gg["decode_tok_s"] / tf["decode_batched_tok_s"], "x",
               note=f"{gg['decode_tok_s']:.1f} vs {tf['decode_batched_tok_s']:.1f} tok/s")
    report.add("gguf", "peak RSS gguf / transformers", rss["gguf"] / rss["transformers"], "x",
               note=f"{rss['gguf']:.0f} vs {rss['transformers']:.0f} MB (whole process: python, torch, model)")
    return {"best": best, "peak_rss_mb": rss, "runs": runs}


if __name__ == "__main__":
    if sys.argv[1:2] != ["worker"]:
        sys.exit("usage: python -m benchmarks.gguf worker --engine transformers|gguf --prefill N "
                 "--decode-prompts K --decode-tokens T (the benchmark itself: python -m benchmarks.run --only gguf)")
    worker(sys.argv[2:])
