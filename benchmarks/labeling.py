"""Labeling throughput: our labeler (pairwise, position-debiased, soft labels, through the runner
with its JSONL output, fsync and manifest) against

(a) the raw engine doing the same forward passes with no pipeline around it: the option requests
    the labeler sent are recorded once, tokenised outside the timing, cut into exactly the batches
    the engine ran (per engine call: its `prefill_batches`, left-padded), and only the
    model forwards + log-softmax + option read-out are timed;
(b) a per-pair one-by-one loop: the same requests sent to the engine one at a time (batch of 1);

plus linearity: labeling time for growing pair counts (pairs/s should stay flat).
Pairs: HH-RLHF harmless dev (short ones, the same pairs for every variant).

(a) and (b) run with the engine's prefix reuse off, so they measure the pipeline around the same
forwards as before; linearity runs with it on (the default). Prefix reuse (issue 14) is measured on
its own, the same engine switched on and off (`engine.min_shared_prefix`) and alternated:
debiased labeling and a 3-principle ensemble, the labels of both sides compared (≤ 1e-4 in p), the
ideal speed-up from the token counts (prompt tokens / tokens the prefix tree prefills), prefill
throughput against the fp32 matmul roof, and each side's peak RSS in its own process
(`python -m benchmarks.labeling rss --reuse on|off --pairs N --principles K`).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import tempfile
import time
from contextlib import contextmanager

import torch

from benchmarks.common import Report, hh_pairs, header, param_counts, python, run_json, side_by_side
from benchmarks.engine import raw_option_forwards


class Recorder:
    """An engine proxy that records every option_logprobs call (requests and options)."""

    def __init__(self, engine):
        self._engine = engine
        self.calls = []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def option_logprobs(self, requests, options):
        self.calls.append((list(requests), list(options)))
        return self._engine.option_logprobs(requests, options)


def label_once(engine, pairs, constitution, cfg, batch_size: int) -> tuple[float, list[dict]]:
    from rlaif.judge import Judge
    from rlaif.stages.labeler import label_pairs

    out = tempfile.mkdtemp(prefix="rlaif-bench-label-")
    try:
        t = time.perf_counter()
        res = label_pairs(pairs, Judge(engine, constitution, cfg), out, batch_size=batch_size, progress=False)
        return time.perf_counter() - t, res.records
    finally:
        shutil.rmtree(out, ignore_errors=True)


@contextmanager
def prefix_reuse(engine, on: bool):
    """The engine with prefix reuse on (its default) or off, for the duration of the block."""
    from rlaif.backends.transformers_engine import MIN_SHARED_PREFIX

    before = engine.min_shared_prefix
    engine.min_shared_prefix = MIN_SHARED_PREFIX if on else 0
    try:
        yield engine
    finally:
        engine.min_shared_prefix = before


def engine_batches(engine, calls) -> tuple[list, list, int]:
    """The exact forward batches the engine ran for the recorded calls, pre-tokenised."""
    from benchmarks.engine import pretokenized_batches

    batches, n_tokens = [], 0
    for requests, _ in calls:
        call_batches, call_tokens, _ = pretokenized_batches(engine, requests)
        batches += call_batches
        n_tokens += call_tokens
    option_ids = [engine.option_token_ids(o) for o in calls[0][1]]
    return batches, option_ids, n_tokens


def run(engine, report: Report, sizes: dict, rates: dict, peak: dict | None = None) -> dict:
    with prefix_reuse(engine, False):
        out = pipeline_overhead(engine, report, sizes, rates)
    out["linearity_s"] = linearity(engine, report, sizes)
    out["prefix_reuse"] = prefix_reuse_speed(engine, report, sizes, rates, peak)
    return out


def pipeline_overhead(engine, report: Report, sizes: dict, rates: dict) -> dict:
    from rlaif.constitution import load_constitution
    from rlaif.judge import JudgeConfig, soft_label

    n = sizes["label_pairs"]
    pairs = hh_pairs(n)
    constitution = load_constitution("harmless")
    cfg = JudgeConfig(debias=True)
    bs = sizes["label_batch"]
    header(f"labeling: labeler (debiased, soft) on {n} HH-RLHF pairs vs raw forwards vs one-by-one "
           f"(runner batch {bs} pairs, engine batch {engine.cfg.batch_size}, prefix reuse off)")

    rec = Recorder(engine)
    label_once(rec, pairs[:n], constitution, cfg, bs)  # warm-up, and the requests it sends
    batches, option_ids, n_tokens = engine_batches(engine, rec.calls)
    requests = [r for reqs, _ in rec.calls for r in reqs]

    def ours():
        return label_once(engine, pairs[:n], constitution, cfg, bs)[1]

    def raw():
        return raw_option_forwards(engine, batches, option_ids)

    def one_by_one():
        labels = []
        for r in requests:
            lp = engine.option_logprobs([r], ["A", "B"])[0]
            labels.append(soft_label(lp))
        return labels

    res = side_by_side({"ours": ours, "raw": raw, "one_by_one": one_by_one}, repeats=sizes["repeats"], warmup=False)
    pps = {k: n / v["best"] for k, v in res.items()}
    report.add("labeling", "labeler pairs/s (debiased: 2 forwards/pair, reuse off)", pps["ours"], "pairs/s",
               note=f"{n_tokens / res['ours']['best']:.0f} prompt tok/s, {n_tokens / len(requests):.0f} tok/request")
    report.add("labeling", "raw engine forwards pairs/s (same batches)", pps["raw"], "pairs/s")
    report.add("labeling", "one-by-one loop pairs/s", pps["one_by_one"], "pairs/s")
    r_raw = pps["ours"] / pps["raw"]
    report.add("labeling", "labeler / raw engine", r_raw, "x", "≥ 0.9x", r_raw >= 0.9)
    report.add("labeling", "labeler / one-by-one", pps["ours"] / pps["one_by_one"], "x")
    # the labels agree: raw forwards give the same soft labels the pipeline recorded
    p_first = [v["p_first"] for r in res["ours"]["out"] for v in r["votes"]]
    raw_lp = torch.cat(res["raw"]["out"])
    rates["label_pairs_per_s"] = pps["ours"]  # replaced by the prefix-reuse rate, the engine's default, below
    return {"pairs": n, "requests": len(requests), "prompt_tokens": n_tokens, "forward_batches": len(batches),
            "best_s": {k: v["best"] for k, v in res.items()}, "times": {k: v["times"] for k, v in res.items()},
            "votes": len(p_first), "raw_rows": int(raw_lp.shape[0])}


def linearity(engine, report: Report, sizes: dict) -> dict:
    """Labeling time for growing pair counts, prefix reuse on (pairs/s should stay flat)."""
    from rlaif.constitution import load_constitution
    from rlaif.judge import JudgeConfig

    header(f"labeling linearity: {', '.join(map(str, sizes['linearity']))} pairs (prefix reuse on)")
    pairs = hh_pairs(max(sizes["linearity"]))
    constitution, cfg = load_constitution("harmless"), JudgeConfig(debias=True)
    lin = {}
    for k in sizes["linearity"]:
        t, _ = label_once(engine, pairs[:k], constitution, cfg, sizes["label_batch"])
        lin[k] = t
        report.add("labeling-scaling", f"{k} pairs: seconds (pairs/s)", t, "s", note=f"{k / t:.2f} pairs/s")
    ks = sorted(lin)
    spread = max(k / lin[k] for k in ks) / min(k / lin[k] for k in ks)
    report.add("labeling-scaling", f"pairs/s max/min over {ks[0]}..{ks[-1]} pairs", spread, "x",
               "≤ 1.2x (linear)", spread <= 1.2)
    return lin


# ---------------------------------------------------------------- prefix reuse (issue 14)


def votes_p_first(records: list[dict]) -> dict:
    return {(r["id"], v["principle"], v["order"]): v["p_first"] for r in records for v in r["votes"]}


def prefix_reuse_speed(engine, report: Report, sizes: dict, rates: dict, peak: dict | None) -> dict:
    """Prefix reuse on vs off, same engine and pairs, alternated: debiased pairs, then a 3-principle
    ensemble; labels compared; ideal from token counts; throughput vs the roof; peak RSS per side."""
    from rlaif.constitution import load_constitution
    from rlaif.judge import JudgeConfig

    constitution, bs, out = load_constitution("harmless"), sizes["label_batch"], {}
    body = param_counts(engine.net)["per_token_prefill"]
    for tag, what, n, k, target in (("prefix-debiased", "debiased", sizes["prefix_pairs"], 1, 1.4),
                                    ("prefix-ensemble", "3-principle ensemble", sizes["ensemble_pairs"], 3, 3.0)):
        pairs, cfg = hh_pairs(n), JudgeConfig(debias=True, principles=k)
        header(f"prefix reuse: {what} labeling of {n} HH-RLHF pairs, reuse on vs off "
               f"(runner batch {bs} pairs, engine batch {engine.cfg.batch_size})")
        counted = {}

        def side(on: bool):
            with prefix_reuse(engine, on):
                before = dict(engine.counters)
                t, records = label_once(engine, pairs, constitution, cfg, bs)
                counted[on] = {c: engine.counters[c] - before[c] for c in ("prompt_tokens", "cached_prompt_tokens",
                                                                             "forward_passes")}
                return t, records

        res = side_by_side({"on": lambda: side(True), "off": lambda: side(False)}, repeats=sizes["repeats"],
                           warmup=False)
        pps = {key: n / v["best"] for key, v in res.items()}
        on, off = votes_p_first(res["on"]["out"][1]), votes_p_first(res["off"]["out"][1])
        worst = max(abs(on[key] - off[key]) for key in off) if on.keys() == off.keys() else float("inf")
        prompt, cached = counted[True]["prompt_tokens"], counted[True]["cached_prompt_tokens"]
        ideal = prompt / (prompt - cached)
        ratio = pps["on"] / pps["off"]
        if k == 1:
            rates["label_pairs_per_s"] = pps["on"]
        report.add(tag, f"{what}: pairs/s, prefix reuse on", pps["on"], "pairs/s",
                   note=f"{counted[True]['forward_passes']} forwards, {prompt / len(on):.0f} tok/request")
        report.add(tag, f"{what}: pairs/s, prefix reuse off", pps["off"], "pairs/s",
                   note=f"{counted[False]['forward_passes']} forwards")
        report.add(tag, f"{what}: reuse on / off", ratio, "x", f"≥ {target}x", ratio >= target,
                   note=f"ideal {ideal:.2f}x from token counts ({prompt} prompt tokens, {prompt - cached} prefilled)")
        report.add(tag, f"{what}: labels on vs off, max |Δp|", worst, "", "≤ 1e-4", worst <= 1e-4,
                   note=f"{len(on)} votes")
        entry = {"pairs": n, "principles": k, "pairs_per_s": pps, "ratio": ratio, "ideal": ideal,
                 "prompt_tokens": prompt, "prefilled_tokens": prompt - cached, "max_abs_dp": worst,
                 "forwards": {str(key): v["forward_passes"] for key, v in counted.items()},
                 "times": {key: v["times"] for key, v in res.items()}}
        if peak:  # 2·N FLOPs per prefilled token; "served" counts the reused tokens as if computed
            roof = peak["best_gflops"] * 1e9
            done = (prompt - cached) / res["on"]["best"]
            served = prompt / res["on"]["best"]
            report.add(tag, f"{what}: prefilled tok/s (reuse on) / fp32 matmul roof", 100 * done * 2 * body / roof,
                       "%", note=f"{done:.0f} tok/s prefilled, {2 * body * done / 1e9:.1f} GFLOP/s")
            report.add(tag, f"{what}: prompt tok/s served (reuse on) / roof", 100 * served * 2 * body / roof, "%",
                       note=f"{served:.0f} tok/s; reuse off: {prompt / res['off']['best']:.0f} tok/s = "
                            f"{100 * prompt / res['off']['best'] * 2 * body / roof:.1f}%")
            entry.update(prefilled_tok_s=done, served_tok_s=served)
        rss = {side_: run_json([python(), "-m", "benchmarks.labeling", "rss", "--reuse", side_, "--pairs",
                                str(sizes["rss_pairs"]), "--principles", str(k), "--batch", str(bs),
                                "--engine-batch", str(engine.cfg.batch_size)], timeout=3600)
               for side_ in ("on", "off")}
        if any("error" in r for r in rss.values()):
            report.skip(f"{tag}-rss", "; ".join(r["error"] for r in rss.values() if "error" in r))
        else:
            r = rss["on"]["peak_rss_mb"] / rss["off"]["peak_rss_mb"]
            report.add(tag, f"{what}: peak RSS reuse on / off ({sizes['rss_pairs']} pairs, own processes)", r, "x",
                       "≤ 1.2x", r <= 1.2,
                       note=f"{rss['on']['peak_rss_mb']:.0f} vs {rss['off']['peak_rss_mb']:.0f} MB")
            entry["rss_mb"] = {key: v["peak_rss_mb"] for key, v in rss.items()}
            if rss["on"].get("labeling_peak_mb") and rss["off"].get("labeling_peak_mb"):
                # the whole-process peak is the model load's; this one starts after the load
                r = rss["on"]["labeling_peak_mb"] / rss["off"]["labeling_peak_mb"]
                report.add(tag, f"{what}: peak RSS while labeling (after the load), reuse on / off", r, "x",
                           "≤ 1.2x", r <= 1.2, note=f"{rss['on']['labeling_peak_mb']:.0f} vs "
                                                    f"{rss['off']['labeling_peak_mb']:.0f} MB")
                entry["labeling_rss_mb"] = {key: v["labeling_peak_mb"] for key, v in rss.items()}
        out[what] = entry
        assert worst <= 1e-4, f"prefix reuse changed a label by {worst:.2e} ({what})"
    return out


def rss_worker(argv=None) -> None:
    """`python -m benchmarks.labeling rss --reuse on|off --pairs N --principles K`: label N pairs in
    this process and print one JSON line with its peak RSS."""
    from benchmarks.common import load_engine
    from rlaif.constitution import load_constitution
    from rlaif.judge import JudgeConfig

    ap = argparse.ArgumentParser(prog="python -m benchmarks.labeling rss")
    ap.add_argument("--reuse", choices=["on", "off"], required=True)
    ap.add_argument("--pairs", type=int, required=True)
    ap.add_argument("--principles", type=int, default=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--engine-batch", type=int, default=None)
    a = ap.parse_args(argv)
    engine = load_engine(a.engine_batch)
    pairs = hh_pairs(a.pairs)
    loaded = high_water_mb(reset=True)  # the peak so far is the model load; from here on, labeling's
    with prefix_reuse(engine, a.reuse == "on"):
        t, records = label_once(engine, pairs, load_constitution("harmless"),
                                JudgeConfig(debias=True, principles=a.principles), a.batch)
    print(json.dumps({"reuse": a.reuse, "pairs": len(records), "seconds": t,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "load_peak_mb": loaded, "labeling_peak_mb": high_water_mb()}))


def high_water_mb(reset: bool = False) -> float | None:
    """This process's peak RSS (VmHWM) in MB; `reset` then sets the peak back to the current RSS
    (Linux: writing 5 to /proc/self/clear_refs), so a later reading covers only what came after.
    None where /proc is not there."""
    try:
        with open("/proc/self/status") as f:
            hwm = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        return hwm
    except (OSError, StopIteration):
        return None


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["rss"]:
        sys.exit("usage: python -m benchmarks.labeling rss --reuse on|off --pairs N [--principles K]")
    rss_worker(sys.argv[2:])
