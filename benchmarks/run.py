"""`python -m benchmarks.run --quick | --full [--only NAME,...] [--out DIR]`

Runs the benchmarks in one process (the peers and the trainers in subprocesses, timed there),
prints every ratio as it is measured, and writes `results.json` and `results.md` under --out
(default runs/bench/<mode>). Benchmarks: engine (generation, prefill roofline, API vs raw forwards),
labeling (labeler vs raw forwards vs one-by-one, linearity, prefix reuse on vs off), distilabel (peer),
training (DPO/RM vs TRL), reference_free (SimPO/CPO/ORPO vs our DPO: step time, peak RSS), grpo (GRPO vs our PPO: step time, peak RSS, reward per 1k sampled
tokens), openai (engine vs llama.cpp server), gguf (engine vs transformers on the same weights),
critique (chains/min, cost per 1000 prompts), ray (the Ray executor vs the in-process runner:
overhead ratio, driver peak RSS at 10x the pairs), judge_server (rlaif serve-reward vs the in-process
judge, micro-batching vs one request at a time, group rewards with prefix reuse on vs off).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import ROOT, Report, header, machine, matmul_gflops

SIZES = {
    # tiny: for building the benchmarks themselves, not for numbers
    "tiny": dict(repeats=1, engine_batch=8, gen_prompts=4, gen_tokens=8, gen_batch_sweep=[], prefill_pairs=4,
                 label_pairs=4, label_batch=8, linearity=[2, 4], prefix_pairs=4, ensemble_pairs=2, rss_pairs=2,
                 distilabel_pairs=2, distilabel_tokens=16, gguf_prefill=4, gguf_decode_prompts=2, gguf_decode_tokens=8,
                 train_pairs=2, train_steps=2, train_max_len=256, grpo_steps=2, grpo_tokens=8, openai_requests=4, openai_tokens=8,
                 openai_concurrency=[1, 4], critique_chains=2, critique_rounds=1, critique_tokens=16),
    # quick: sized for < 3 minutes on an idle 2-core machine (SmolLM2-135M prefills a few hundred
    # tokens/s there, so a debiased pair of ~430-token prompts costs seconds)
    "quick": dict(repeats=1, engine_batch=16, gen_prompts=16, gen_tokens=16, gen_batch_sweep=[], prefill_pairs=2,
                  label_pairs=4, label_batch=8, linearity=[2, 4], prefix_pairs=8, ensemble_pairs=4, rss_pairs=8,
                  distilabel_pairs=4, distilabel_tokens=128, gguf_prefill=8, gguf_decode_prompts=4,
                  gguf_decode_tokens=32,
                  train_pairs=2, train_steps=3, train_max_len=256, grpo_steps=4, grpo_tokens=32,
                  openai_requests=4, openai_tokens=16,
                  openai_concurrency=[1, 4, 16], critique_chains=2, critique_rounds=1, critique_tokens=32),
    "full": dict(repeats=2, engine_batch=16, gen_prompts=32, gen_tokens=64, gen_batch_sweep=[8, 32],
                 prefill_pairs=32, label_pairs=64, label_batch=8, linearity=[100, 200, 400], prefix_pairs=200,
                 ensemble_pairs=64, rss_pairs=32, distilabel_pairs=32, gguf_prefill=32, gguf_decode_prompts=8,
                 gguf_decode_tokens=64,
                 distilabel_tokens=128, train_pairs=8, train_steps=10, train_max_len=512, grpo_steps=8,
                 grpo_tokens=40, openai_requests=32,
                 openai_tokens=64, openai_concurrency=[1, 4, 16], critique_chains=16, critique_rounds=2,
                 critique_tokens=96),
}
# which benchmarks a mode runs (quick leaves out the slow peers unless asked with --only)
ORDER = ["engine", "omp", "labeling", "critique", "training", "reference_free", "grpo", "openai", "gguf", "distilabel",
         "ray", "judge_server"]
QUICK_SKIP = {"distilabel", "omp", "judge_server"}


def omp_policies(report: Report, sizes: dict) -> None:
    """The engine's decode/prefill rate in fresh processes under OMP_WAIT_POLICY unset / PASSIVE,
    alternated (unset, passive, unset, passive) and best kept."""
    from benchmarks.common import python

    header("OpenMP wait policy: engine decode and prefill in fresh processes, default vs PASSIVE")
    best: dict = {}
    for _ in range(2):
        for policy in ("", "PASSIVE"):
            env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
            if policy:
                env["OMP_WAIT_POLICY"] = policy
            r = _run_env([python(), "-m", "benchmarks.omp_probe", str(max(2, sizes["gen_prompts"] // 2)),
                          str(max(4, sizes["gen_tokens"] // 2))], env)
            if "error" in r:
                report.skip("omp", r["error"])
                return
            b = best.setdefault(policy or "default", {"decode_tok_s": 0, "prefill_tok_s": 0, "load": []})
            b["decode_tok_s"] = max(b["decode_tok_s"], r["decode_tok_s"])
            b["prefill_tok_s"] = max(b["prefill_tok_s"], r["prefill_tok_s"])
            b["load"].append(r["load"])
    for what in ("decode_tok_s", "prefill_tok_s"):
        d, p = best["default"][what], best["PASSIVE"][what]
        report.add("omp-wait-policy", f"{what.split('_')[0]} tok/s: default {d:.1f}, PASSIVE {p:.1f}", p / d, "x",
                   note="PASSIVE / default")
    report.details["omp"] = best


def _run_env(cmd, env):
    import subprocess

    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1200, cwd=ROOT, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode or not lines:
        return {"error": f"exit {p.returncode}: " + " | ".join((p.stderr or "").strip().splitlines()[-4:])}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_const", const="quick", dest="mode")
    mode.add_argument("--full", action="store_const", const="full", dest="mode")
    mode.add_argument("--tiny", action="store_const", const="tiny", dest="mode")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(ORDER)}")
    ap.add_argument("--out", default=None)
    ap.add_argument("--setup-peer-venv", action="store_true",
                    help="create .venv-bench with distilabel 1.5.3 (the peer in the distilabel benchmark) and exit")
    args = ap.parse_args(argv)
    if args.setup_peer_venv:
        from benchmarks.distilabel_peer import setup_venv

        return setup_venv()
    mode = args.mode or "quick"
    sizes = SIZES[mode]
    only = [x for x in args.only.split(",") if x]
    unknown = set(only) - set(ORDER)
    if unknown:
        print(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}; expected {', '.join(ORDER)}", file=sys.stderr)
        return 2
    chosen = only or [b for b in ORDER if not (mode == "quick" and b in QUICK_SKIP)]
    out_dir = Path(args.out or ROOT / "runs" / "bench" / mode)
    out_dir.mkdir(parents=True, exist_ok=True)

    started = time.time()
    report = Report(mode)
    report.machine = machine()
    m = report.machine
    print(f"rlaif benchmarks ({mode}): {m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} "
          f"with {m['torch_threads']} threads, {m['memory_gb']} GB RAM, CUDA: {m['cuda']}")
    header("fp32 matmul roof")
    peak = matmul_gflops(1024, 1.0 if mode != "full" else 3.0)
    report.details["matmul"] = peak
    report.add("hardware", "fp32 matmul 1024² best", peak["best_gflops"], "GFLOP/s",
               note=f"mean {peak['mean_gflops']:.1f} over {peak['calls']} calls")

    engine = None
    need_engine = {"engine", "labeling", "critique", "distilabel"} & set(chosen)
    if need_engine:
        from benchmarks.common import load_engine

        t = time.perf_counter()
        engine = load_engine(sizes["engine_batch"])
        report.details["engine_load_s"] = time.perf_counter() - t
    rates: dict = {}
    for name in chosen:
        try:
            if name == "engine":
                from benchmarks import engine as b

                report.details["engine"] = b.run(engine, report, sizes, peak)
            elif name == "omp":
                omp_policies(report, sizes)
            elif name == "labeling":
                from benchmarks import labeling as b

                report.details["labeling"] = b.run(engine, report, sizes, rates, peak)
            elif name == "critique":
                from benchmarks import critique as b

                report.details["critique"] = b.run(engine, report, sizes, rates)
            elif name == "training":
                from benchmarks import training as b

                report.details["training"] = b.run(report, sizes, rates)
            elif name == "reference_free":  # SimPO / CPO / ORPO vs our DPO: step time, peak RSS
                from benchmarks import reference_free as b

                report.details["reference_free"] = b.run(report, sizes)
            elif name == "grpo":
                from benchmarks import grpo as b

                report.details["grpo"] = b.run(report, sizes)
            elif name == "openai":
                from benchmarks import openai_server as b

                report.details["openai"] = b.run(report, sizes)
            elif name == "gguf":
                from benchmarks import gguf as b

                report.details["gguf"] = b.run(report, sizes)
            elif name == "distilabel":
                from benchmarks import distilabel_peer as b

                report.details["distilabel"] = b.run(engine, report, sizes, rates)
            elif name == "ray":  # Ray executor vs in-process runner (tiny judge; 200 pairs and 10x in --full)
                from benchmarks import ray_executor as b

                report.details["ray"] = b.run(report, 200 if mode == "full" else 20, 10 if mode == "full" else 2)
            elif name == "judge_server":  # the judge as a reward server (rlaif/integrations/)
                from benchmarks import judge_server as b

                report.details["judge_server"] = b.run(report, mode)
        except Exception as e:  # one broken benchmark must not hide the others' numbers
            traceback.print_exc()
            report.skip(name, f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if "critique" in chosen and rates:
        from benchmarks import critique as b

        b.cost_per_1000(report, rates)

    report.machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report.details["wall_seconds"] = time.time() - started
    (out_dir / "results.json").write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    (out_dir / "results.md").write_text(report.markdown() + "\n")
    la0, la1 = m["load_average_start"], report.machine["load_average_end"]
    print(f"\n{len(report.rows)} figures in {time.time() - started:.0f} s; load average {la0[0]} at start, "
          f"{la1[0]} at end; written to {out_dir}/results.json and results.md")
    for line in summary_lines(report):
        print(line)
    return 0


def summary_lines(report: Report) -> list[str]:
    """The closing lines: every missed target, then every benchmark not measured. A value may be a
    number or a text (a verdict, a version, "n/a"); a number prints with 3 significant digits."""
    def shown(row) -> str:
        v = row.value
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        return " ".join(x for x in (f"{v:.3g}" if number else str(v), row.unit) if x)

    lines = [f"  target missed: {r.bench}: {r.metric} = {shown(r)} (target {r.target})"
             for r in report.rows if r.met is False]
    return lines + [f"  not measured: {k}: {v}" for k, v in report.skipped.items()]


if __name__ == "__main__":
    sys.exit(main())
