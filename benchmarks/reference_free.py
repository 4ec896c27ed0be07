"""Reference-free preference optimisation against our DPO: step time and peak memory of SimPO, CPO
(`rlaif dpo --loss simpo|cpo`) and ORPO (`rlaif orpo`) next to DPO with its reference, on the same
model (embedded SmolLM2-135M), pairs (HH-RLHF, short enough that nothing is cut), batch, max length,
optimiser settings and seed; each trainer in its own process, so peak RSS is its own.

Our DPO never holds two models while it trains: the reference log-probs are computed in one pass
before the first step (from the starting weights, or from a `--reference` model that is loaded for
that pass and dropped). So the arms are:
    dpo       DPO, reference = the starting policy (the default): one model, plus the reference pass
    dpo-ref   DPO with a separate reference model (the same weights from another folder): a second
              model in memory during the reference pass, counted in the peak
    simpo / cpo / orpo   no reference, no reference pass
Step time: median over the steps after the warm-up ones (benchmarks/training.py's rule); setup: the
time before the first step (model load, tokenising and, for DPO, the reference pass).

    python -m benchmarks.run --quick --only reference_free      (or --full)
    python -m benchmarks.reference_free --worker ARM --model DIR --prefs FILE --steps N --batch B --max-length L --out DIR
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

ARMS = ["dpo", "dpo-ref", "simpo", "cpo", "orpo"]


def worker(a) -> dict:
    t0 = time.time()
    common = dict(output_dir=a.out, batch_size=a.batch, max_steps=a.steps, max_length=a.max_length,
                  weight_decay=0.0, warmup_steps=0, max_grad_norm=1.0, seed=0, save=False, progress=False,
                  log_every=1, eval_batch_size=a.batch, learning_rate=5e-6, soft_labels=False)
    if a.worker == "orpo":
        from rlaif.train.orpo import ORPOConfig, train_orpo as train

        cfg = ORPOConfig(policy=a.model, prefs=a.prefs, beta=0.1, **common)
    else:
        from rlaif.train.dpo import DPOConfig, train_dpo as train

        loss = {"dpo": "sigmoid", "dpo-ref": "sigmoid"}.get(a.worker, a.worker)
        extra = {"beta": 2.0, "simpo_gamma": 1.0} if loss == "simpo" else {"beta": 0.1}
        cfg = DPOConfig(policy=a.model, prefs=a.prefs, loss=loss, reference=a.reference if a.worker == "dpo-ref"
                        else None, **extra, **common)
    started = time.time()
    train(cfg)
    total = time.time() - started
    rows = [json.loads(line) for line in open(f"{a.out}/train_log.jsonl")]
    ends = [r["elapsed_s"] for r in rows]  # the log's clock starts just before the first step
    steps = [ends[0]] + [b - c for b, c in zip(ends[1:], ends[:-1])]
    return {"step_s": steps, "loss": [r["loss"] for r in rows], "setup_s": total - ends[-1], "total_s": total,
            "import_s": started - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def reference_copy(model: str, into: Path) -> str:
    """The model's files under another folder (symlinks): the trainer loads it as a second model."""
    into.mkdir(parents=True, exist_ok=True)
    for f in Path(model).iterdir():
        if f.is_file():
            (into / f.name).symlink_to(f.resolve())
    return str(into)


def run(report, sizes: dict) -> dict:
    from benchmarks.common import header, model_dir, python, run_json
    from benchmarks.training import steady_step, write_prefs

    n, steps, L = sizes["train_pairs"], sizes["train_steps"], sizes["train_max_len"]
    model = model_dir()
    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-reffree-"))
    prefs = tmp / "prefs.jsonl"
    longest = write_prefs(prefs, n, L, model)
    ref = reference_copy(model, tmp / "reference")
    header(f"reference-free preference optimisation vs our DPO: batch {n} pairs, {steps} steps, max_length {L} "
           f"(longest sequence {longest} tokens), fp32, each in its own process")
    res = {}
    for arm in ARMS:
        res[arm] = run_json([python(), "-m", "benchmarks.reference_free", "--worker", arm, "--model", model,
                             "--reference", ref, "--prefs", str(prefs), "--steps", str(steps), "--batch", str(n),
                             "--max-length", str(L), "--out", str(tmp / arm)], timeout=1800)
        if "error" in res[arm]:
            report.skip(f"reference_free:{arm}", res[arm]["error"])
    base = res.get("dpo", {})
    if not base or "error" in base:
        return {"results": res}
    step_base = steady_step(base["step_s"])
    for arm in ARMS:
        r = res.get(arm)
        if not r or "error" in r:
            continue
        step = steady_step(r["step_s"])
        report.add("reference-free", f"{arm}: s/step (median after warm-up)", step, "s",
                   note=f"setup {r['setup_s']:.1f} s (DPO: with the reference pass), total {r['total_s']:.1f} s, "
                        f"peak RSS {r['peak_rss_mb']:.0f} MB")
        if arm == "dpo":
            continue
        report.add("reference-free", f"{arm} / dpo step time", step / step_base, "x")
        report.add("reference-free", f"{arm} / dpo peak RSS", r["peak_rss_mb"] / base["peak_rss_mb"], "x")
        report.add("reference-free", f"{arm} / dpo total time (setup + steps)", r["total_s"] / base["total_s"], "x")
    for arm in ("simpo", "orpo"):
        r, d = res.get(arm), res.get("dpo-ref")
        if r and d and "error" not in r and "error" not in d:
            report.add("reference-free", f"{arm} / dpo-ref peak RSS", r["peak_rss_mb"] / d["peak_rss_mb"], "x")
    return {"pairs": n, "steps": steps, "max_length": L, "longest": longest, "results": res}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=ARMS, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--reference", required=True)
    ap.add_argument("--prefs", required=True)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(json.dumps(worker(a)))


if __name__ == "__main__":
    main()
