"""Training plots from `train_log.jsonl` rows (matplotlib, Agg backend: no display needed).

- `plot_reward_vs_kl`: mean reward against mean KL to the reference, one point per PPO step,
  coloured by step — over-optimisation shows as reward flattening (or falling) while KL grows.
- `plot_reward_vs_kl_runs`: several PPO runs on one reward-vs-KL plot (single RM vs an ensemble),
  drawn by `rlaif plot-reward-kl RUN_DIR...`.
- `plot_curves`: a few logged metrics against the step, one panel each.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from rlaif.plotting import pyplot


def read_log(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def save_reward_kl(plt, fig, ax, out: str | Path, reward_key: str, title: str,
                   kl_label: str = "KL(policy ‖ reference) per response (nats)") -> Path:
    """The axes every reward-vs-KL plot shares, then the PNG."""
    ax.set_xlabel(kl_label)
    ax.set_ylabel(f"mean {reward_key}")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_reward_vs_kl(rows: Sequence[dict], out: str | Path, reward_key: str = "reward",
                      kl_key: str = "kl", title: str = "reward vs KL") -> Path:
    plt = pyplot()
    pts = [(r[kl_key], r[reward_key], r.get("step", i)) for i, r in enumerate(rows)
           if r.get(kl_key) is not None and r.get(reward_key) is not None]
    fig, ax = plt.subplots(figsize=(5, 4))
    if pts:
        kl, reward, step = zip(*pts)
        ax.plot(kl, reward, color="0.75", linewidth=0.8, zorder=1)
        sc = ax.scatter(kl, reward, c=step, cmap="viridis", s=18, zorder=2)
        fig.colorbar(sc, ax=ax, label="step")
    return save_reward_kl(plt, fig, ax, out, reward_key, title)


def plot_curves(rows: Sequence[dict], keys: Sequence[str], out: str | Path, title: str = "") -> Path:
    plt = pyplot()
    keys = [k for k in keys if any(r.get(k) is not None for r in rows)] or ["step"]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.2), squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r.get("step", i), r[key]) for i, r in enumerate(rows) if r.get(key) is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o" if len(pts) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_reward_vs_kl_runs(runs: dict[str, Sequence[dict]], out: str | Path, reward_key: str = "reward",
                           kl_key: str = "kl", title: str = "reward vs KL") -> Path:
    """Several PPO runs on one reward-vs-KL plot (e.g. a single RM against an RM ensemble), one
    line per run, labelled by `runs`' keys. Each run's reward is the one it optimised, so the
    curves show how fast each reward is bought with KL, not which policy is better."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, rows in runs.items():
        pts = [(r[kl_key], r[reward_key]) for r in rows
               if r.get(kl_key) is not None and r.get(reward_key) is not None]
        if pts:
            kl, reward = zip(*pts)
            ax.plot(kl, reward, marker="o", markersize=3, linewidth=1, label=label)
    ax.legend(fontsize=8)
    return save_reward_kl(plt, fig, ax, out, reward_key, title)
