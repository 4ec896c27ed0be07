"""Shared pieces of the benchmarks: the machine, the fp32 matmul roof, timing side by side, the data
(HH-RLHF dev pairs, the shipped red-team prompts) and the report every benchmark writes into.

Timing rule: two things compared are run in the same process, on the same inputs, alternately
(A, B, A, B ...) after one untimed warm-up each, and the *best* time of each is kept. The best time
is the least disturbed by other load on a shared machine; alternating spreads slow periods over both.
"""

from __future__ import annotations

import gzip
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
MODEL = "embedded:smollm2-135m-instruct"


# ---------------------------------------------------------------- the report


@dataclass
class Row:
    bench: str
    metric: str
    value: Any
    unit: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""


@dataclass
class Report:
    mode: str
    rows: list[Row] = field(default_factory=list)
    machine: dict = field(default_factory=dict)
    details: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)

    def add(self, bench: str, metric: str, value, unit: str = "", target: str = "", met: bool | None = None,
            note: str = "") -> None:
        row = Row(bench, metric, value, unit, target, met, note)
        self.rows.append(row)
        shown = _fmt(value)
        flag = "" if met is None else ("  [target met]" if met else "  [target MISSED]")
        tgt = f"  (target {target})" if target else ""
        print(f"  {metric:<58} {shown:>12} {unit:<10}{tgt}{flag}{'  ' + note if note else ''}", flush=True)

    def skip(self, bench: str, why: str) -> None:
        self.skipped[bench] = why
        print(f"  skipped: {why}", flush=True)

    def to_json(self) -> dict:
        return {"mode": self.mode, "machine": self.machine, "rows": [r.__dict__ for r in self.rows],
                "skipped": self.skipped, "details": self.details}

    def markdown(self) -> str:
        out = ["| benchmark | metric | value | unit | target | met | note |", "|---|---|---:|---|---|---|---|"]
        for r in self.rows:
            met = "" if r.met is None else ("yes" if r.met else "**no**")
            out.append(f"| {r.bench} | {r.metric} | {_fmt(r.value)} | {r.unit} | {r.target} | {met} | {r.note} |")
        return "\n".join(out)


def _fmt(v) -> str:
    if isinstance(v, float):
        if v == 0:
            return "0"
        a = abs(v)
        return f"{v:.3g}" if a < 10 else (f"{v:.1f}" if a < 1000 else f"{v:,.0f}")
    return str(v)


def header(title: str) -> None:
    la = os.getloadavg()
    print(f"\n== {title}   (load average {la[0]:.2f} {la[1]:.2f} {la[2]:.2f})", flush=True)


# ---------------------------------------------------------------- the machine


def machine() -> dict:
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "memory_gb": mem_gb, "python": platform.python_version(), "torch": torch.__version__,
            "platform": platform.platform(), "cuda": torch.cuda.is_available(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}


def matmul_gflops(n: int = 1024, seconds: float = 1.5) -> dict:
    """The machine's fp32 matmul rate with torch's own threads: n×n @ n×n repeated for a while,
    best per-call rate kept (2n³ FLOPs a call)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(3):
        torch.mm(a, b, out=c)
    best, calls, start = 0.0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or calls < 5:
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        dt = time.perf_counter() - t
        best = max(best, 2 * n**3 / dt / 1e9)
        calls += 1
    total = time.perf_counter() - start
    return {"n": n, "best_gflops": best, "mean_gflops": 2 * n**3 * calls / total / 1e9, "calls": calls}


# ---------------------------------------------------------------- timing


def best_of(fn: Callable[[], Any], repeats: int = 1, warmup: bool = True) -> tuple[float, Any]:
    if warmup:
        fn()
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def side_by_side(fns: dict[str, Callable[[], Any]], repeats: int = 1, warmup: bool = True) -> dict[str, dict]:
    """Run each fn once untimed (if warmup), then `repeats` rounds alternating between them;
    -> name -> {"best": s, "times": [...], "out": last output}."""
    res = {k: {"times": [], "out": None} for k in fns}
    if warmup:
        for k, fn in fns.items():
            res[k]["out"] = fn()
    names = list(fns)
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            res[k]["out"] = fns[k]()
            res[k]["times"].append(time.perf_counter() - t)
    for k in res:
        res[k]["best"] = min(res[k]["times"])
    return res


# ---------------------------------------------------------------- engine and data


def load_engine(batch_size: int | None = None):
    """The embedded model on CPU; `batch_size` None keeps EngineConfig's default."""
    from rlaif.backends import load_engine as _load
    from rlaif.config import parse_model_spec

    cfg = parse_model_spec(MODEL).model_copy(update={"device": "cpu"})
    if batch_size is not None:
        cfg = cfg.model_copy(update={"batch_size": batch_size})
    return _load(cfg)


def model_dir() -> str:
    from rlaif.backends.embedded import resolve_model_dir

    return resolve_model_dir(MODEL)


def param_counts(net) -> dict:
    """Parameters that do matmul work per token: all weights but the token embedding (a lookup);
    the LM head counts only where logits are computed for every token (decode)."""
    total = sum(p.numel() for p in net.parameters())
    emb = net.get_input_embeddings().weight
    head = net.get_output_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    body = total - emb.numel() - (0 if tied else head.numel())
    return {"total_unique": total, "embedding": emb.numel(), "lm_head": head.numel(), "tied": tied,
            "body": body, "per_token_prefill": body, "per_token_decode": body + head.numel()}


def hh_dev_path() -> Path | None:
    for p in (os.environ.get("RLAIF_HH_DEV"), ROOT.parent / "shared/data/hh-rlhf/harmless-base-dev.jsonl.gz",
              ROOT / "shared/data/hh-rlhf/harmless-base-dev.jsonl.gz", "/work/shared/data/hh-rlhf/harmless-base-dev.jsonl.gz"):
        if p and Path(p).is_file():
            return Path(p)
    return None


def hh_pairs(n: int, max_chars: int = 1200) -> list[dict]:
    """The first n usable HH-RLHF harmless dev pairs (labeler-normalised), short ones only so a
    fixed count means a fixed amount of work: conversation + both replies ≤ max_chars."""
    from rlaif.stages.pair_inputs import normalize_pairs

    path = hh_dev_path()
    if path is None:
        raise FileNotFoundError("HH-RLHF dev file not found (shared/data/hh-rlhf/harmless-base-dev.jsonl.gz; "
                                "or set RLAIF_HH_DEV)")
    rows = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) >= 20 * n + 200:
                break
    pairs, _ = normalize_pairs(rows, str(path))
    short = [p for p in pairs
             if sum(len(m["content"]) for m in p["prompt"]) + len(p["a"]) + len(p["b"]) <= max_chars]
    if len(short) < n:
        raise ValueError(f"only {len(short)} HH-RLHF pairs under {max_chars} chars; asked for {n}")
    return short[:n]


def red_team_prompts(n: int) -> list[list[dict]]:
    from rlaif.prompts_io import read_prompts

    recs = read_prompts("red_team")
    out = [r["prompt"] if isinstance(r["prompt"], list) else [{"role": "user", "content": r["prompt"]}]
           for r in recs]
    while len(out) < n:
        out = out + out
    return out[:n]


# ---------------------------------------------------------------- subprocesses


def run_json(cmd: list[str], timeout: float, env: dict | None = None, cwd: Path = ROOT) -> dict:
    """Run a worker that prints one JSON object as its last stdout line; -> that object, or
    {"error": ...} with the tail of its stderr."""
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd,
                           env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s: {' '.join(cmd[:4])} ..."}
    lines = [l for l in p.stdout.strip().splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        tail = (p.stderr or p.stdout).strip().splitlines()[-6:]
        return {"error": f"exit {p.returncode}: " + " | ".join(tail)}
    return json.loads(lines[-1])


def python() -> str:
    return sys.executable
