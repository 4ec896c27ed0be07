"""Training step time and peak memory: our DPO vs TRL's DPOTrainer, our reward model vs TRL's
RewardTrainer — same model (embedded SmolLM2-135M), same pairs (HH-RLHF, short enough that neither
side truncates), same batch, max length, optimiser settings and seed; each trainer in its own
process (benchmarks/train_worker.py). Step time: median over the steps after the warm-up ones (the
first; the first two when there are 8 steps or more: both sides run steps 2-3 slower). Equal first-step
loss is checked and printed (DPO: policy = reference at step 1, so both are ln 2; RM: same head
init, same batch).
"""

from __future__ import annotations

import json
import statistics
import tempfile
from pathlib import Path

from benchmarks.common import Report, hh_pairs, header, model_dir, python, run_json


def write_prefs(path: Path, n: int, max_length: int, model: str) -> int:
    """n HH-RLHF pairs in TRL conversational form whose chosen and rejected fit max_length tokens."""
    from rlaif.train.encoding import encode
    from rlaif.train.models import load_tokenizer

    tok = load_tokenizer(model)
    rows, longest = [], 0
    for p in hh_pairs(4 * n + 8, max_chars=900):
        rec = {"prompt": p["prompt"], "chosen": [{"role": "assistant", "content": p["a"]}],
               "rejected": [{"role": "assistant", "content": p["b"]}]}
        lens = [len(encode(tok, rec["prompt"], rec[k], 10**6)[0]) for k in ("chosen", "rejected")]
        if max(lens) <= max_length:
            rows.append(rec)
            longest = max(longest, *lens)
        if len(rows) == n:
            break
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return longest


def steady_step(step_s: list[float]) -> float:
    """Median seconds per step after the warm-up steps (see the module docstring)."""
    skip = 2 if len(step_s) >= 8 else 1
    return statistics.median(step_s[skip:] or step_s)


def run(report: Report, sizes: dict, rates: dict) -> dict:
    n, steps, L = sizes["train_pairs"], sizes["train_steps"], sizes["train_max_len"]
    model = model_dir()
    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-train-"))
    prefs = tmp / "prefs.jsonl"
    longest = write_prefs(prefs, n, L, model)
    header(f"training: ours vs TRL 1.16, batch {n} pairs, {steps} steps, max_length {L} "
           f"(longest sequence {longest} tokens), fp32, each in its own process")
    which = ["ours-dpo", "trl-dpo", "ours-rm", "trl-rm"] + (["trl-dpo-precompute"] if sizes["repeats"] > 1 else [])
    res = {}
    for w in which:
        res[w] = run_json([python(), "-m", "benchmarks.train_worker", w, "--model", model, "--prefs", str(prefs),
                           "--steps", str(steps), "--batch", str(n), "--max-length", str(L), "--out", str(tmp / w)],
                          timeout=1800)
        if "error" in res[w]:
            report.skip(f"training:{w}", res[w]["error"])
    for kind, peers in (("dpo", ["trl-dpo", "trl-dpo-precompute"]), ("rm", ["trl-rm"])):
        o = res.get(f"ours-{kind}", {})
        if "error" in o or not o:
            continue
        step_o = steady_step(o["step_s"])
        report.add(f"training-{kind}", f"ours: s/step (median after warm-up)", step_o, "s",
                   note=f"setup {o['setup_s']:.1f} s, peak RSS {o['peak_rss_mb']:.0f} MB")
        if kind == "dpo":
            rates.update(dpo_s_per_step=step_o, dpo_batch=n)
        for peer in peers:
            t = res.get(peer)
            if not t or "error" in t:
                continue
            step_t = steady_step(t["step_s"])
            report.add(f"training-{kind}", f"{peer}: s/step", step_t, "s",
                       note=f"setup {t['setup_s']:.1f} s, peak RSS {t['peak_rss_mb']:.0f} MB")
            ratio = step_o / step_t
            report.add(f"training-{kind}", f"ours / {peer} step time", ratio, "x", "≤ 1.0x", ratio <= 1.0)
            report.add(f"training-{kind}", f"ours / {peer} peak RSS", o["peak_rss_mb"] / t["peak_rss_mb"], "x")
            d = abs(o["loss"][0] - t["loss"][0])
            report.add(f"training-{kind}", f"first-step loss ours vs {peer}",
                       f"{o['loss'][0]:.5f} vs {t['loss'][0]:.5f}", "", "equal", d <= 1e-3 * max(1, abs(t["loss"][0])))
    return {"pairs": n, "steps": steps, "max_length": L, "longest": longest, "results": res}
