"""What a training run leaves behind: `train_log.jsonl` a step at a time, the summary of its curves
with time per step and peak memory, and at the end summary.json, a curves plot and the manifest
entry."""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from rlaif.train.config import TrainConfig


def peak_memory_mb() -> dict:
    """Peak resident memory of this process (and of CUDA, when used)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": round(rss / 1024 if sys.platform != "darwin" else rss / 2**20, 1)}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


class TrainLog:
    """`train_log.jsonl`: one JSON object per logged step, written by the main process only,
    flushed each line so a killed run keeps its curve."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.rows: list[dict] = []
        self.started = time.time()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", encoding="utf-8")

    def log(self, row: dict) -> dict:
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
        row.setdefault("elapsed_s", round(time.time() - self.started, 3))
        self.rows.append(row)
        if self.enabled:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
        return row

    def close(self) -> None:
        if self.enabled and not self._f.closed:
            self._f.close()


def gather_mean(accelerator, value: torch.Tensor) -> float:
    """Mean over processes of a per-process scalar (equal shares of a global batch)."""
    v = value.detach().float().reshape(1)
    return accelerator.gather(v).mean().item()


def gather_sum(accelerator, value: torch.Tensor) -> float:
    """Sum over processes of a per-process scalar (token counts, sums to divide later)."""
    return accelerator.gather(value.detach().float().reshape(1)).sum().item()


def directed_share(texts: Sequence[str], device) -> torch.Tensor:
    """The reward-hacking canary of an RL step: the share of sampled replies that carry text
    addressed to a judge (option markers, score claims, orders to the judge, the template's fences;
    `rlaif.judge.judge_directed`). A rising share is a policy learning to talk to its reward."""
    from rlaif.judge import judge_directed

    return torch.tensor(sum(map(judge_directed, texts)) / max(len(texts), 1), device=device)


def summary(log: TrainLog, steps: int, seconds: float, keys: Sequence[str]) -> dict:
    """Start/end values of the logged curves plus time per step and peak memory."""
    out: dict[str, Any] = {"steps": steps, "seconds": round(seconds, 3),
                           "seconds_per_step": round(seconds / max(steps, 1), 4), **peak_memory_mb()}
    for k in keys:
        vals = [r[k] for r in log.rows if k in r and r[k] is not None]
        if vals:
            out[f"{k}_start"], out[f"{k}_end"] = vals[0], vals[-1]
    return out


def write_json(path: str | Path, obj: Any) -> None:
    from rlaif.records import write_atomic

    write_atomic(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def finish_run(out: Path, stage: str, cfg: TrainConfig, result: dict, log: TrainLog,
               curve_keys: Sequence[str]) -> None:
    """Main process, after training: summary.json, a curves plot, the manifest entry."""
    from rlaif.manifest import update_manifest
    from rlaif.train.plots import plot_curves

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", result)
    if log.rows:
        plot_curves(log.rows, curve_keys, out / "train_curves.png", title=stage)
    update_manifest(out, stage, {"config": cfg.model_dump(mode="json"), "summary": result,
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


__all__ = ["TrainLog", "peak_memory_mb", "gather_mean", "gather_sum", "directed_share", "summary", "write_json",
           "finish_run"]
