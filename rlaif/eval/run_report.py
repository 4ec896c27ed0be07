"""`OUT/report.html` and `OUT/metrics.json` for a pipeline run: what each stage did and cost, example
chains, the label distribution, the labeler against human labels, training curves, and the policy
evaluation. Sections with nothing behind them say so instead of disappearing."""

from __future__ import annotations

import json
from pathlib import Path

from rlaif.eval.html import HtmlReport
from rlaif.plotting import pyplot
from rlaif.records import read_output, write_atomic
from rlaif.run_context import RunContext

SECTIONS = ("Judge check", "Model roles", "Overview", "Critique and revision", "AI labels", "Labeler vs human labels", "Reward model",
            "Policy training", "GRPO", "Iterative rounds", "Policy evaluation")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def stage_seconds(out: Path, name: str, info: dict) -> float | None:
    """Seconds a stage's work took when it was computed: from its manifest(s), else its summary."""
    manifest = _json(out / name / "manifest.json")
    total = sum(e.get("seconds_total", e.get("seconds", 0)) or 0 for e in manifest.get("stages", {}).values()
                if isinstance(e, dict) and isinstance(e.get("seconds_total", e.get("seconds")), (int, float)))
    if total:
        return round(total, 1)
    return info.get("seconds")


def label_histogram(records: list[dict], title: str):
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    kinds = sorted({r.get("kind") or r.get("given", "pairs") for r in records})
    values = [[r["p_a"] for r in records if (r.get("kind") or r.get("given", "pairs")) == k] for k in kinds]
    ax.hist(values, bins=[i / 20 for i in range(21)], label=kinds, stacked=True)
    ax.axvline(0.5, color="0.4", linestyle=":")
    ax.set_xlabel("p(first response of the pair is better)")
    ax.set_ylabel("pairs")
    ax.set_title(title)
    if len(kinds) > 1:
        ax.legend(fontsize=8)
    plt.close(fig)
    return fig


def role_line(roles: dict) -> str:
    return " · ".join(f"{role} {r['engine']}:{r['model']}" for role, r in roles.items())


def judge_banner(check: dict | None, judge_is_policy: bool) -> list[tuple[str, str]]:
    """(level, text) lines that open the report: what the judge check found, said plainly."""
    from rlaif.judge import judge_verdict

    lines = []
    if check is None:
        lines.append(("note", "No judge check ran in this pipeline (no stage uses the judge, or judge_check.enabled "
                              "is false)."))
    elif check["status"] == "at_chance":
        lines.append(("alarm", "The judge cannot tell this constitution's check pairs apart: its accuracy on them is "
                               "no better than a coin flip, so the AI labels, the reward model, the trained policy "
                               "and the win and harmless rates below carry no signal. " + check["message"]))
    elif check["status"] == "below_chance":
        lines.append(("alarm", "The judge prefers the worse reply of this constitution's check pairs, so the AI labels "
                               "and everything trained or evaluated on them below point the wrong way. "
                               + check["message"]))
    else:
        lines.append(({"alarm": "alarm", "warn": "warn", "ok": "ok"}[judge_verdict(check)], check["message"]))
    if judge_is_policy:
        lines.append(("warn", "The judge is the policy model: the model being trained also labels and evaluates "
                              "itself. Name a judge block (e.g. a larger model behind a server or a GGUF file)."))
    return lines


def write_run_report(p: RunContext) -> Path:
    out: Path = p.out
    summary = p.summary
    stages = summary["stages"]
    roles = summary["roles"]
    rep = HtmlReport(f"rlaif run: {summary['pipeline']}",
                     f"constitution {summary['constitution']} · {role_line(roles)} · folder {out}")
    check = summary.get("judge_check")
    for level, text in judge_banner(check, summary["judge_is_policy"]):
        rep.banner(text, level)
    metrics: dict = {"pipeline": summary["pipeline"], "constitution": summary["constitution"],
                     "roles": roles, "judge_is_policy": summary["judge_is_policy"],
                     "judge_check": check, "stages": {}}

    sec = rep.section("Judge check")
    if check and check["status"] != "skipped":
        keys = ("status", "pairs", "accuracy", "accuracy_ci95", "mean_p_right", "position_flip_rate",
                "prefers_longer_rate", "seconds_per_pair")
        sec.append(rep.table({k: check.get(k) for k in keys}))
        sec.append(rep.para("The judge labels the constitution's check pairs — unambiguous pairs written for this "
                            "check, the better reply longer in some and shorter in others — exactly as it labels "
                            "the run's pairs. A judge whose 95 % CI includes 0.5 is at chance; rlaif run "
                            "--require-judge-accuracy X stops before labeling when accuracy is below X. Per-pair "
                            "labels: judge_check/labels.jsonl.", note=True))
    else:
        sec.append(rep.para(check["message"] if check else "No judge check in this run.", note=True))

    audit = summary.get("judge_audit")
    if audit:
        sec = rep.section("Judge audit")
        for gate in audit.get("failed_gates", []):
            rep.banner(gate + " — the run stopped here", "alarm")
        flagged = [k for k, v in audit.get("probes", {}).items() if v.get("flagged")]
        if flagged:
            rep.banner(f"The judge audit found a bias the policy can learn to exploit: {', '.join(flagged)} "
                       "(judge_audit/audit.md).", "warn")
        sec.extend(rep.para(line) for line in audit.get("lines", []))
        sec.append(rep.para((audit.get("note", "") + " ").lstrip() + "Each probe changes one thing in a pair (the "
                            "order, content-free padding, the template's wording, text addressed to the judge) and "
                            "reports the mean effect with its 95 % CI; FLAGGED means the CI lies wholly on the "
                            "biased side. Full figures: judge_audit/audit.json.", note=True))
        metrics["judge_audit"] = {k: audit.get(k) for k in ("probes", "failed_gates", "pairs")}

    sec = rep.section("Model roles")
    usage = summary.get("role_usage", {})
    sec.append(rep.table([{"role": role, **{k: (", ".join(v) if isinstance(v, list) else v) for k, v in r.items()},
                           "requests": usage.get(role, {}).get("requests"),
                           "engine seconds": usage.get(role, {}).get("seconds")}
                          for role, r in roles.items()],
                         ["role", "engine", "model", "base_url", "defaulted_to", "same_engine_as", "requests",
                          "engine seconds"]))
    sec.append(rep.para("policy: samples responses, is trained and is the reference. critic: writes critiques and "
                        "revisions. judge: labels pairs, is checked against human labels, judges the policy "
                        "evaluation and gives direct rewards. A role without a block of its own takes the one named "
                        "under defaulted_to; roles with identical blocks share one engine, and then requests count "
                        "for all of them.", note=True))
    metrics["role_usage"] = usage

    sec = rep.section("Overview")
    rows = []
    for name, info in stages.items():
        counts = {k: v for k, v in info.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                  and "seconds" not in k and not k.endswith(("_start", "_end"))}
        rows.append({"stage": name, "seconds (this run)": info.get("wall_seconds"),
                     "seconds (when computed)": stage_seconds(out, name, info),
                     "counts": ", ".join(f"{k}={v}" for k, v in list(counts.items())[:6])})
        metrics["stages"][name] = {"wall_seconds": info.get("wall_seconds"),
                                   "seconds_when_computed": stage_seconds(out, name, info)}
    sec.append(rep.table(rows, ["stage", "seconds (this run)", "seconds (when computed)", "counts"]))
    sec.append(rep.para(f"Wall time of this invocation: {sum(i.get('wall_seconds', 0) for i in stages.values()):.1f} s. "
                        "A stage already finished in this folder is skipped (≈0 s this run); the other column "
                        "is the time its work took when it was done, from its manifest.", note=True))

    sec = rep.section("Critique and revision")
    chains = read_output(out / "critique" / "chains.jsonl")
    if chains:
        crit = stages.get("critique", {})
        keys = ("chains", "complete_chains", "degenerate_revision_share", "degenerate_chain_share",
                "mean_words_original", "mean_words_final", "sl_cai", "revision_pairs")
        sec.append(rep.table({k: crit.get(k) for k in keys if k in crit}))
        metrics["critique"] = {k: crit.get(k) for k in keys if k in crit}
        for ch in chains[:3]:
            prompt = ch["prompt"][-1]["content"]
            text = [f"PROMPT: {prompt}", f"ORIGINAL: {ch['original']}"]
            for r in ch["rounds"]:
                flag = f"  [degenerate: {', '.join(r['degenerate'])}]" if r.get("degenerate") else ""
                text += [f"— round {r['round']} · principle {r['principle']}",
                         f"CRITIQUE: {r['critique']}", f"REVISION: {r['revision']}{flag}"]
            sec.append(rep.quote("\n".join(text)))
    else:
        sec.append(rep.para("No critique stage in this pipeline.", note=True))

    sec = rep.section("AI labels")
    labels = read_output(out / "label" / "labels.jsonl")
    if labels:
        pairs = {r["id"]: r for r in read_output(out / "label" / "pairs.jsonl")}
        for r in labels:
            r["kind"] = pairs.get(r.get("source_id") or "", {}).get("kind")
        lab = stages.get("label", {})
        flips = [r["labels_by_order"] for r in labels if r["labels_by_order"].get("ba") is not None]
        table = {"pairs labelled": len(labels), "position_flip_rate": lab.get("position_flip_rate"),
                 "within margin": lab.get("within_margin"), "preferences kept": lab.get("preferences"),
                 "mean p_chosen": sum(r["p_chosen"] for r in labels) / len(labels)}
        rev = [r for r in labels if r["kind"] == "revision_vs_original"]
        if rev:
            table["revision preferred over original"] = sum(r["p_a"] > 0.5 for r in rev) / len(rev)
        sec.append(rep.table(table))
        sec.append(rep.image(label_histogram(labels, f"soft labels ({len(flips)} pairs judged in both orders)")))
        metrics["labels"] = table
        comparison = lab.get("comparison")
        if comparison:
            sec.append(rep.para("The same pairs labelled under a second constitution:"))
            sec.append(rep.table(comparison))
            metrics["constitution_comparison"] = comparison
    else:
        sec.append(rep.para("No labeling stage in this pipeline.", note=True))

    sec = rep.section("Labeler vs human labels")
    ev = stages.get("evaluate", {})
    if ev.get("labeler_alignment"):
        sec.append(rep.table(ev["labeler_alignment"]))
        cal = out / "evaluate" / "labeler" / "calibration.png"
        if cal.exists():
            sec.append(rep.image(cal))
        sec.append(rep.para("Accuracy: share of held-out human pairs where the labeler's p(human-chosen) > 0.5 "
                            "(0.5 for a tie); the CI is a 95 % bootstrap. The ten most confident disagreements "
                            "are quoted in evaluate/labeler/report.md.", note=True))
        metrics["labeler_alignment"] = ev["labeler_alignment"]
    else:
        sec.append(rep.para(ev.get("human", "No evaluation stage in this pipeline."), note=True))

    sec = rep.section("Reward model")
    rm = stages.get("reward_model")
    if rm:
        keep = {k: v for k, v in rm.items() if not isinstance(v, (dict, list))}
        sec.append(rep.table(keep))
        if ev.get("reward_model_on_human"):
            sec.append(rep.para("On held-out human pairs:"))
            sec.append(rep.table(ev["reward_model_on_human"]))
        curves = out / "reward_model" / "train_curves.png"
        if curves.exists():
            sec.append(rep.image(curves))
        metrics["reward_model"] = {**keep, "on_human": ev.get("reward_model_on_human")}
    else:
        sec.append(rep.para("No reward model in this pipeline.", note=True))

    sec = rep.section("Policy training")
    shown = False
    for name in ("sft", "dpo", "ppo", "grpo"):
        if stages.get(name):
            keep = {k: v for k, v in stages[name].items() if not isinstance(v, (dict, list))}
            sec.append(rep.para(name.upper() + (" (SL-CAI: the policy fine-tuned on the final revisions; DPO, PPO and GRPO "
                                                "start from it and keep it as their reference)" if name == "sft" else "")))
            sec.append(rep.table(keep))
            for png in ("train_curves.png", "reward_vs_kl.png"):
                if (out / name / png).exists():
                    sec.append(rep.image(out / name / png))
            metrics[name] = keep
            shown = True
    if not shown:
        sec.append(rep.para("The policy is trained in the iterative rounds (next section)." if stages.get("rounds")
                            else "No policy training in this pipeline.", note=True))

    from rlaif.eval.grpo_report import grpo_section
    from rlaif.eval.rounds_report import rounds_section

    grpo_section(rep, out, metrics)

    rounds_section(rep, out, metrics)

    sec = rep.section("Policy evaluation")
    if ev.get("policy"):
        sec.append(rep.table(ev["policy"]))
        samples = read_output(out / "evaluate" / "policy_samples.jsonl")
        for s in samples[:3]:
            sec.append(rep.quote(f"PROMPT: {s['prompt'][-1]['content']}\nSTART: {s['start']}\nTRAINED: {s['trained']}\n"
                                 f"p(trained better) = {s['p_trained_better']:.3f}"))
        metrics["policy"] = ev["policy"]
    else:
        sec.append(rep.para("No trained policy to evaluate in this pipeline.", note=True))

    write_atomic(out / "metrics.json", json.dumps(metrics, indent=2, default=str) + "\n")
    return rep.write(out / "report.html")
