"""Ray executor vs the in-process runner: `rlaif label` (pairwise, debiased) on the same HH-RLHF
pairs with 2 CPUs, each side in a fresh process.

- overhead ratio: wall time of `rlaif label --executor ray --ray-actors 2` (on a local Ray of 2 CPUs
  started in the same process just before; 2 actors of 1 CPU each holding one engine) over the
  in-process runner (torch on 2 threads),
  the same 200 pairs; the Ray side's time includes starting the actors and loading an engine in each,
  not `ray.init` (timed alone before the command and printed beside it);
- driver memory: peak RSS (VmHWM) of the command's own process at N and 10·N pairs, both executors
  (the Ray actors and Ray's own daemons are other processes).

Models: `tiny` (default) is a 2-layer random Llama (hidden 32, 2048 positions) with the embedded
model's tokenizer, so the prompts have the embedded model's token counts:
the forward passes cost almost nothing, so the ratio shows Ray's fixed cost; `embedded` is
SmolLM2-135M-Instruct, where labeling itself dominates.

    python -m benchmarks.ray_executor [--pairs 200] [--scale 10] [--model tiny|embedded]
    python -m benchmarks.run --full --only ray
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import Report, header, hh_pairs, python, run_json


def _vm(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # MiB
    return float("nan")


def worker(argv: list[str]) -> None:
    """One `rlaif label` in this process; prints wall seconds and the peak RSS as JSON."""
    a = argparse.ArgumentParser()
    a.add_argument("--pairs")
    a.add_argument("--judge")
    a.add_argument("--out")
    a.add_argument("--executor", default="local")
    args = a.parse_args(argv)
    from rlaif.cli import main

    cmd = ["label", "--pairs", args.pairs, "--judge", args.judge, "--device", "cpu", "--out", args.out,
           "--batch-size", "8"]
    ray_start = 0.0
    if args.executor == "ray":
        import ray

        t = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        ray_start = time.perf_counter() - t
        cmd += ["--executor", "ray", "--ray-actors", "2"]
    rss_before = _vm("VmRSS")
    t = time.perf_counter()
    code = main(cmd)
    seconds = time.perf_counter() - t
    print(json.dumps({"exit": code, "seconds": seconds, "ray_start_s": ray_start, "peak_rss_mib": _vm("VmHWM"),
                      "rss_before_label_mib": rss_before, "rss_end_mib": _vm("VmRSS"),
                      "rss_end_anon_mib": _vm("RssAnon"), "rss_end_shmem_mib": _vm("RssShmem")}))


def _write_pairs(path: Path, pairs: list[dict], copies: int) -> Path:
    """`copies` of the pairs, each copy's conversations marked so every record has its own id."""
    with open(path, "w") as f:
        for k in range(copies):
            for p in pairs:
                prompt = [dict(m) for m in p["prompt"]]
                if k:
                    prompt[-1]["content"] += f" ({k})"
                f.write(json.dumps({"prompt": prompt, "response_a": p["a"], "response_b": p["b"]}) + "\n")
    return path


def _judge(model: str, tmp: Path) -> str:
    if model == "embedded":
        return "embedded:smollm2-135m-instruct"
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from rlaif.backends.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir("smollm2-135m-instruct"))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(tmp / "tiny")
    tok.save_pretrained(tmp / "tiny")
    return str(tmp / "tiny")


def run(report: Report, n: int = 200, scale: int = 10, model: str = "tiny", rss: bool = True) -> dict:
    header(f"Ray executor vs in-process runner: rlaif label, {n} HH pairs, 2 CPUs, {model} judge")
    details: dict = {"pairs": n, "scale": scale, "model": model}
    with tempfile.TemporaryDirectory(prefix="rlaif-ray-bench-") as tmp:
        tmp = Path(tmp)
        judge = _judge(model, tmp)
        pairs = hh_pairs(n)
        sizes = [1] + ([scale] if rss else [])
        for copies in sizes:
            path = _write_pairs(tmp / f"pairs{copies}.jsonl", pairs, copies)
            for executor in ("local", "ray"):
                r = run_json([python(), "-m", "benchmarks.ray_executor", "worker", "--pairs", str(path), "--judge",
                              judge, "--out", str(tmp / f"{executor}{copies}"), "--executor", executor], timeout=3600)
                if "error" in r or r.get("exit") != 0:
                    report.skip("ray", f"{executor} x{copies}: {r.get('error', r)}")
                    return details
                details[f"{executor}_x{copies}"] = r
            same = (tmp / f"local{copies}" / "labels.jsonl").read_bytes() == (tmp / f"ray{copies}" / "labels.jsonl").read_bytes()
            details[f"identical_x{copies}"] = same
        loc, ray = details["local_x1"], details["ray_x1"]
        report.add("ray", f"{n} pairs: in-process runner seconds", loc["seconds"], "s")
        report.add("ray", f"{n} pairs: ray executor seconds (2 actors x 1 CPU)", ray["seconds"], "s",
                   note=f"+ {ray['ray_start_s']:.1f} s ray.init before it")
        report.add("ray", "overhead ratio ray / in-process", ray["seconds"] / loc["seconds"], "x",
                   note=f"labels.jsonl byte-identical: {details['identical_x1']}")
        if rss:
            for executor in ("local", "ray"):
                a, b = details[f"{executor}_x1"]["peak_rss_mib"], details[f"{executor}_x{scale}"]["peak_rss_mib"]
                big = details[f"{executor}_x{scale}"]
                report.add("ray", f"{executor}: driver peak RSS at {n} / {n * scale} pairs", b / a, "x",
                           note=f"{a:.0f} MiB -> {b:.0f} MiB ({(b - a) * 1024 / (n * scale - n):.2f} KiB/pair); "
                                f"at the end {big['rss_end_anon_mib']:.0f} MiB private + "
                                f"{big['rss_end_shmem_mib']:.0f} MiB shared")
            report.add("ray", f"{n * scale} pairs: overhead ratio ray / in-process",
                       details[f"ray_x{scale}"]["seconds"] / details[f"local_x{scale}"]["seconds"], "x",
                       note=f"labels.jsonl byte-identical: {details[f'identical_x{scale}']}")
    return details


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        worker(argv[1:])
        return 0
    a = argparse.ArgumentParser()
    a.add_argument("--pairs", type=int, default=200)
    a.add_argument("--scale", type=int, default=10)
    a.add_argument("--model", choices=["tiny", "embedded"], default="tiny")
    a.add_argument("--no-rss", action="store_true", help="skip the 10x memory runs")
    args = a.parse_args(argv)
    report = Report("ray")
    details = run(report, args.pairs, args.scale, args.model, rss=not args.no_rss)
    print(json.dumps(details, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
