"""Peer: distilabel's AI-feedback task vs our labeler on the same pairs with the same model.

Ours: the pairwise labeler (debiased: both orders, soft labels from option log-probs; two forward
passes per pair, no generation). Peer: distilabel 1.5.3 `UltraFeedback` (aspect overall-rating)
through `TransformersLLM` on the same model folder (the embedded SmolLM2-135M safetensors), greedy,
`max_new_tokens` as set per mode: it must *generate* a rating and rationale for each reply and parse
them. distilabel pins dependencies of its own, so it lives in a separate venv (.venv-bench, made by
`python -m benchmarks.run --setup-peer-venv`) and runs as a subprocess, timed there (model load excluded, one warm-up row).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, Report, hh_pairs, header, model_dir, run_json

VENV = ROOT / ".venv-bench" / "bin" / "python"


PEER_PACKAGES = [["torch==2.13.0"], ["distilabel==1.5.3", "transformers", "requests"]]


def setup_venv() -> int:
    """Create .venv-bench with distilabel (torch first, the same build as the main venv)."""
    import subprocess
    import sys

    if not VENV.exists():
        subprocess.run(["python3", "-m", "venv",
                        str(VENV.parent.parent)], check=True)
    for pkgs in PEER_PACKAGES:
        subprocess.run([str(VENV), "-m", "pip", "install", "-q", *pkgs], check=True)
    return 0


def run(engine, report: Report, sizes: dict, rates: dict) -> dict:
    if not VENV.exists():
        report.skip("distilabel", f"{VENV} missing: run `.venv/bin/python -m benchmarks.run --setup-peer-venv` "
                                  "(distilabel pins its own deps, so it gets a venv of its own)")
        return {}
    from benchmarks.labeling import label_once
    from rlaif.constitution import load_constitution
    from rlaif.judge import JudgeConfig, conversation_text

    n = sizes["distilabel_pairs"]
    pairs = hh_pairs(n)
    header(f"peer: distilabel UltraFeedback (TransformersLLM, greedy, max_new_tokens "
           f"{sizes['distilabel_tokens']}) vs our labeler, same {n} HH-RLHF pairs, same model")
    rows = [{"instruction": conversation_text(p["prompt"], 3000), "generations": [p["a"], p["b"]]} for p in pairs]
    spec = {"model": model_dir(), "rows": rows, "max_new_tokens": sizes["distilabel_tokens"],
            "batch": sizes["label_batch"], "threads": 0}
    tmp = Path(tempfile.mkdtemp(prefix="rlaif-bench-distilabel-"))
    (tmp / "in.json").write_text(json.dumps(spec))
    constitution = load_constitution("harmless")
    cfg = JudgeConfig(debias=True)
    label_once(engine, pairs, constitution, cfg, sizes["label_batch"])  # warm-up
    t_ours = [label_once(engine, pairs, constitution, cfg, sizes["label_batch"])[0]]
    peer = run_json([str(VENV), str(ROOT / "benchmarks" / "distilabel_worker.py"), str(tmp / "in.json")],
                    timeout=3600, env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                                       "PYTHONPATH": ""})
    t_ours.append(label_once(engine, pairs, constitution, cfg, sizes["label_batch"])[0])
    if "error" in peer:
        report.skip("distilabel", peer["error"])
        return {"error": peer["error"]}
    ours_pps = n / min(t_ours)
    peer_pps = n / peer["label_s"]
    report.add("peer-distilabel", "our labeler pairs/s (same pairs)", ours_pps, "pairs/s")
    report.add("peer-distilabel", "distilabel UltraFeedback pairs/s", peer_pps, "pairs/s",
               note=f"both replies rated in {peer['both_rated']}/{peer['rows']} rows; "
                    f"{peer['generated_tokens'] / peer['label_s']:.1f} generated tok/s")
    report.add("peer-distilabel", "ours / distilabel", ours_pps / peer_pps, "x", "≥ 2x", ours_pps / peer_pps >= 2)
    return {"ours_s": t_ours, "peer": peer}
