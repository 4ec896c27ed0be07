"""Labeling throughput: our labeler (pairwise, position-debiased, soft labels, through the runner
with its JSONL output, fsync and manifest) against

(a) the raw engine doing the same forward passes with no pipeline around it: the option requests
    the labeler sent are recorded once, tokenised outside the timing, cut into exactly the batches
    the engine ran (per engine call: its `prefill_batches`, left-padded), and only the
    model forwards + log-softmax + option read-out are timed;
(b) a per-pair one-by-one loop: the same requests sent to the engine one at a time (batch of 1);

plus linearity: labeling time for growing pair counts (pairs/s should stay flat).
Pairs: HH-RLHF harmless dev (short ones, the same pairs for every variant).
"""

from __future__ import annotations

import shutil
import tempfile
import time

import torch

from benchmarks.common import Report, hh_pairs, header, side_by_side
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
    from rlaif.stages.labeler import label_pairs

    out = tempfile.mkdtemp(prefix="rlaif-bench-label-")
    try:
        t = time.perf_counter()
        res = label_pairs(pairs, constitution, engine, cfg, out, batch_size=batch_size, progress=False)
        return time.perf_counter() - t, res.records
    finally:
        shutil.rmtree(out, ignore_errors=True)


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


def run(engine, report: Report, sizes: dict, rates: dict) -> dict:
    from rlaif.constitution import load_constitution
    from rlaif.stages.labeler import LabelerConfig, soft_label

    n = sizes["label_pairs"]
    pairs = hh_pairs(max(n, max(sizes["linearity"])))
    constitution = load_constitution("harmless")
    cfg = LabelerConfig(debias=True)
    bs = sizes["label_batch"]
    header(f"labeling: labeler (debiased, soft) on {n} HH-RLHF pairs vs raw forwards vs one-by-one "
           f"(runner batch {bs} pairs, engine batch {engine.cfg.batch_size})")

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
    report.add("labeling", "labeler pairs/s (debiased: 2 forwards/pair)", pps["ours"], "pairs/s",
               note=f"{n_tokens / res['ours']['best']:.0f} prompt tok/s, {n_tokens / len(requests):.0f} tok/request")
    report.add("labeling", "raw engine forwards pairs/s (same batches)", pps["raw"], "pairs/s")
    report.add("labeling", "one-by-one loop pairs/s", pps["one_by_one"], "pairs/s")
    r_raw = pps["ours"] / pps["raw"]
    report.add("labeling", "labeler / raw engine", r_raw, "x", "≥ 0.9x", r_raw >= 0.9)
    report.add("labeling", "labeler / one-by-one", pps["ours"] / pps["one_by_one"], "x")
    # the labels agree: raw forwards give the same soft labels the pipeline recorded
    p_first = [v["p_first"] for r in res["ours"]["out"] for v in r["votes"]]
    raw_lp = torch.cat(res["raw"]["out"])
    rates["label_pairs_per_s"] = pps["ours"]
    out = {"pairs": n, "requests": len(requests), "prompt_tokens": n_tokens, "forward_batches": len(batches),
           "best_s": {k: v["best"] for k, v in res.items()}, "times": {k: v["times"] for k, v in res.items()},
           "votes": len(p_first), "raw_rows": int(raw_lp.shape[0])}

    # ---- linearity
    header(f"labeling linearity: {', '.join(map(str, sizes['linearity']))} pairs")
    lin = {}
    for k in sizes["linearity"]:
        t, _ = label_once(engine, pairs[:k], constitution, cfg, bs)
        lin[k] = t
        report.add("labeling-scaling", f"{k} pairs: seconds (pairs/s)", t, "s", note=f"{k / t:.2f} pairs/s")
    ks = sorted(lin)
    spread = max(k / lin[k] for k in ks) / min(k / lin[k] for k in ks)
    report.add("labeling-scaling", f"pairs/s max/min over {ks[0]}..{ks[-1]} pairs", spread, "x",
               "≤ 1.2x (linear)", spread <= 1.2)
    out["linearity_s"] = lin
    return out
