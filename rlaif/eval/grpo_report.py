"""The report's "GRPO" section (from OUT/grpo/train_log.jsonl and summary.json): each reward's curve
and the weighted total, KL to the reference (β > 0), reply length, and the fraction of groups whose
replies all scored the same — such a group has zero advantage everywhere and teaches nothing, so a
fraction near 1 says the reward cannot tell the policy's samples apart. Failed rewards per step are
counted (those replies were left out of the loss; reasons in OUT/grpo/reward_failures.jsonl). The
reward-hacking canary — the share of replies carrying text aimed at the judge — is drawn beside
the reward, and a rise is said in plain words."""

from __future__ import annotations

import json
from pathlib import Path

from rlaif.plotting import pyplot


def plot_grpo(rows: list[dict], out: Path) -> Path:
    """Four panels against the step: rewards (total and each component), KL, length, zero-std groups."""
    plt = pyplot()
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 5, figsize=(19, 3.4))
    ax = axes[0]
    ax.plot(steps, [r.get("reward") for r in rows], label="total (weighted)", linewidth=2)
    for key in sorted({k for r in rows for k in r if k.startswith("rewards/") and k.endswith("/mean")}):
        ax.plot(steps, [r.get(key) for r in rows], label=key.split("/")[1], alpha=0.8)
    ax.set_title("reward")
    ax.legend(fontsize=7)
    canary = ax.twinx()  # beside the reward: the share of replies written at the judge
    canary.plot(steps, [r.get("judge_directed_rate") for r in rows], color="C3", linestyle=":",
                label="judge-directed replies")
    canary.set_ylim(0, 1)
    canary.set_ylabel("judge-directed share", fontsize=7, color="C3")
    panels = [("kl", "KL to the reference (k3, per token)"), ("completion_length", "reply length (tokens)"),
              ("frac_reward_zero_std", "groups with zero reward variance"),
              ("judge_directed_rate", "replies with text aimed at the judge")]
    for ax, (key, title) in zip(axes[1:], panels):
        values = [r.get(key) for r in rows]
        if any(v is not None for v in values):
            ax.plot(steps, values)
        else:
            ax.text(0.5, 0.5, "not logged (β = 0: no reference)", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
    for ax in axes:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def canary_warning(rows: list[dict]) -> str | None:
    """Plain words when the share of replies addressed to the judge rose over training: the mean of
    the last third of the steps above the first third's, and above 5 % of the replies."""
    rates = [r["judge_directed_rate"] for r in rows if r.get("judge_directed_rate") is not None]
    if len(rates) < 3:
        return None
    third = max(len(rates) // 3, 1)
    early, late = sum(rates[:third]) / third, sum(rates[-third:]) / third
    if late > early and late > 0.05:
        return (f"Reward-hacking canary: the share of sampled replies that carry text aimed at the judge (option "
                f"letters, score claims, orders to the judge, the template's tags) rose from {early:.0%} to "
                f"{late:.0%} over training. The policy may be learning to talk to its reward rather than to the "
                "user: read grpo/train_log.jsonl's samples and audit the judge (rlaif judge-audit).")
    return None


def grpo_section(rep, out: Path, metrics: dict) -> None:
    sec = rep.section("GRPO")
    log = out / "grpo" / "train_log.jsonl"
    if not log.exists():
        sec.append(rep.para("No GRPO stage in this pipeline.", note=True))
        return
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    summary_path = out / "grpo" / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    if not rows:
        sec.append(rep.para("The GRPO stage logged no steps.", note=True))
        return
    first, last = rows[0], rows[-1]
    table = {"steps": len(rows), "advantage": summary.get("advantage"), "loss_type": summary.get("loss_type"),
             "num_generations": summary.get("num_generations"), "beta": summary.get("beta"),
             "rewards (weights)": ", ".join(f"{k}×{v}" for k, v in (summary.get("rewards") or {}).items()),
             "reward first → last step": f"{first.get('reward')} → {last.get('reward')}",
             "reply length first → last": f"{first.get('completion_length')} → {last.get('completion_length')}",
             "mean zero-variance group fraction": round(sum(r.get("frac_reward_zero_std", 0) for r in rows) / len(rows), 4),
             "rewards failed (replies left out)": sum(r.get("reward_failed", 0) for r in rows),
             "sampled tokens": last.get("sampled_tokens"),
             "seconds per step": summary.get("seconds_per_step")}
    if "kl" in last:
        table["KL last step"] = last["kl"]
    warning = canary_warning(rows)
    if warning:
        rep.banner(warning, "warn")
        sec.append(rep.para(warning))
    table["judge-directed replies first → last"] = f"{first.get('judge_directed_rate')} → {last.get('judge_directed_rate')}"
    sec.append(rep.table(table))
    sec.append(rep.image(plot_grpo(rows, out / "grpo" / "grpo_curves.png")))
    sec.append(rep.para("Each prompt's replies are compared with each other: the advantage is a reply's reward minus "
                        "its group's mean (GRPO: divided by the group's std; RLOO: minus the mean of the others). "
                        "A group whose replies all score the same gives no signal. A reply whose reward failed "
                        "(e.g. a judge request refused) is left out of the loss and of its group's baseline, never "
                        "scored 0; grpo/reward_failures.jsonl names each with its reason.", note=True))
    metrics["grpo"] = {**table, "curves": {k: [r.get(k) for r in rows] for k in
                                           ("reward", "kl", "completion_length", "frac_reward_zero_std",
                                            "judge_directed_rate")
                                           if any(k in r for r in rows)}}
