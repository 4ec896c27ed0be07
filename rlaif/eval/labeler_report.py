"""`rlaif eval-labeler`: label held-out human pairs blind and measure agreement.

Blind: for each human pair a seeded coin (from the seed and the pair's line) decides whether the
human-chosen reply is shown as `a` or `b`, so neither the labeler nor a single-order position bias
knows where the human's choice sits. The labels go through the labeler stage (resumable
`labels.jsonl`); then

    OUT/metrics.json      n, accuracy, accuracy_ci95, ece, brier, position_flip_rate (an exact tie in
                          one order is half a flip; see metrics.py), position_order_ties, prefers_first_rate,
                          prefers_longer_rate, human_prefers_longer_rate, pairs_per_second, tokens_processed, ...
    OUT/calibration.png   reliability diagram (10 bins, symmetric points; see metrics.py)
    OUT/report.md         the table and the ten most confident disagreements, quoted
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Sequence


from rlaif import metrics as M
from rlaif.hh_rlhf import load_human_pairs
from rlaif.records import record_id, write_atomic
from rlaif.manifest import read_manifest, update_manifest
from rlaif.plotting import pyplot
from rlaif.runner import OutputLock
from rlaif.judge import Judge
from rlaif.stages.labeler import label_pairs

METRICS = "metrics.json"
CALIBRATION = "calibration.png"
REPORT = "report.md"


def blind_pairs(human_pairs: Sequence[dict], seed: int) -> list[dict]:
    """Human pairs -> labeler pairs with the human-chosen reply on a seeded random side."""
    out = []
    for p in human_pairs:
        chosen_first = random.Random(int(record_id("blind", seed, p["line"]), 16)).random() < 0.5
        a, b = (p["chosen"], p["rejected"]) if chosen_first else (p["rejected"], p["chosen"])
        out.append({"prompt": p["prompt"], "a": a, "b": b, "given": "hh_rlhf", "source_line": p["line"],
                    "source_id": None, "human_chosen": "a" if chosen_first else "b"})
    return out


def p_human(rec: dict) -> float:
    return rec["p_a"] if rec["human_chosen"] == "a" else 1.0 - rec["p_a"]


def compute_metrics(records: Sequence[dict], seed: int = 0) -> dict:
    """Agreement, calibration, position and length bias of labeled human pairs."""
    ph = [p_human(r) for r in records]
    lo, hi = M.bootstrap_ci(M.agreement_scores(ph), seed=seed)
    ordered = [r["labels_by_order"] for r in records if r["labels_by_order"].get("ab") is not None]
    both = [o for o in ordered if o.get("ba") is not None]
    firsts = [o["ab"] for o in ordered] + [1.0 - o["ba"] for o in both]  # p(first-shown wins)
    len_a = [len(r["chosen" if r["chosen_is"] == "a" else "rejected"][0]["content"]) for r in records]
    len_b = [len(r["rejected" if r["chosen_is"] == "a" else "chosen"][0]["content"]) for r in records]
    len_h = [la if r["human_chosen"] == "a" else lb for r, la, lb in zip(records, len_a, len_b)]
    len_o = [lb if r["human_chosen"] == "a" else la for r, la, lb in zip(records, len_a, len_b)]
    return {
        "n": len(records),
        "accuracy": M.accuracy(ph),
        "accuracy_ci95": [lo, hi],
        "ties": sum(1 for p in ph if p == 0.5),
        "ece": M.ece(ph),
        "brier": M.brier(ph),
        "mean_confidence": sum(max(p, 1 - p) for p in ph) / len(ph),
        "position_flip_rate": M.position_flip_rate([o["ab"] for o in both], [o["ba"] for o in both]) if both else None,
        "position_order_ties": M.order_ties([o["ab"] for o in both], [o["ba"] for o in both]) if both else None,
        "prefers_first_rate": M.prefers_first_rate(firsts) if firsts else None,
        "prefers_longer_rate": M.prefers_longer_rate([r["p_a"] for r in records], len_a, len_b),
        "human_prefers_longer_rate": M.human_prefers_longer_rate(len_h, len_o),
        "calibration_bins": M.calibration_bins(ph),
        "first_order_only": _first_order_only(records, seed) if both else None,
    }


def _first_order_only(records: Sequence[dict], seed: int) -> dict:
    """What a single-order run on the same pairs reads: the "ab" half of a debiased run (same
    prompts, same principles, same blind sides)."""
    ph = [r["labels_by_order"]["ab"] if r["human_chosen"] == "a" else 1.0 - r["labels_by_order"]["ab"]
          for r in records]
    lo, hi = M.bootstrap_ci(M.agreement_scores(ph), seed=seed)
    return {"accuracy": M.accuracy(ph), "accuracy_ci95": [lo, hi], "ece": M.ece(ph), "brier": M.brier(ph)}


def plot_calibration(bins: list[dict], path: Path, title: str) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfectly calibrated")
    full = [b for b in bins if b["count"]]
    ax.bar([(b["lo"] + b["hi"]) / 2 for b in full], [b["frequency"] for b in full], width=0.09,
           alpha=0.35, color="tab:blue", label="observed frequency")
    ax.plot([b["mean_p"] for b in full], [b["frequency"] for b in full], "o-", color="tab:blue",
            label="mean p in bin")
    for b in full:
        ax.annotate(str(b["count"]), ((b["lo"] + b["hi"]) / 2, b["frequency"]), ha="center", va="bottom", fontsize=7)
    ax.set(xlim=(0, 1), ylim=(0, 1.05), xlabel="labeler probability (each pair counted from both sides)",
           ylabel="human agreement frequency", title=title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _quote(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    text = text if len(text) <= limit else text[:limit] + " …"
    return "> " + text.replace("|", "\\|")


def disagreements(records: Sequence[dict], k: int = 10) -> list[dict]:
    """The k pairs where the labeler most confidently prefers the human-rejected reply."""
    return sorted((r for r in records if p_human(r) < 0.5), key=p_human)[:k]


def write_report(out_dir: Path, metrics: dict, records: Sequence[dict], title: str) -> None:
    rows = [("pairs (n)", metrics["n"]),
            ("accuracy", f"{metrics['accuracy']:.3f}  [{metrics['accuracy_ci95'][0]:.3f}, {metrics['accuracy_ci95'][1]:.3f}]"),
            ("ECE (10 bins)", f"{metrics['ece']:.3f}"), ("Brier", f"{metrics['brier']:.3f}"),
            ("mean confidence", f"{metrics['mean_confidence']:.3f}"), ("exact ties", metrics["ties"])]
    for key in ("position_flip_rate", "position_order_ties", "prefers_first_rate", "prefers_longer_rate",
                "human_prefers_longer_rate", "pairs_per_second", "tokens_processed"):
        v = metrics.get(key)
        rows.append((key, "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else v)))
    lab = metrics.get("labeler", {})
    shown = ", ".join(f"{k}={lab[k]}" for k in ("engine", "model", "mode", "debias", "cot", "principles",
                                                "self_consistency", "few_shot", "seed") if k in lab)
    lines = [f"# Labeler vs human labels — {title}", "",
             f"Labeler: {shown}; constitution {metrics.get('constitution')}; source {metrics.get('source')} "
             f"({metrics.get('read')} read, skipped {metrics.get('skipped') or 'none'}, limit {metrics.get('limit')}).", "",
             "| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]
    lines += ["", f"![calibration]({CALIBRATION})", "", "## Ten most confident disagreements", "",
              "The labeler's probability that the human-chosen reply is better, lowest first.", ""]
    for i, r in enumerate(disagreements(records), 1):
        human = r["chosen" if r["chosen_is"] == r["human_chosen"] else "rejected"][0]["content"]
        other = r["rejected" if r["chosen_is"] == r["human_chosen"] else "chosen"][0]["content"]
        last_user = [m["content"] for m in r["prompt"] if m["role"] == "user"][-1]
        lines += [f"### {i}. p(human choice) = {p_human(r):.3f} — principle `{r['principle']}`, line {r['source_line']}",
                  "", "User (last turn):", "", _quote(last_user), "", "Human-chosen reply:", "", _quote(human), "",
                  "Labeler-preferred reply:", "", _quote(other), ""]
        if r.get("rationale"):
            lines += ["Rationale:", "", _quote(r["rationale"]), ""]
    write_atomic(out_dir / REPORT, "\n".join(lines) + "\n")


def run_eval(human: str | Path, judge: Judge, out_dir: str | Path, *, limit: int | None = None, seed: int = 0,
             batch_size: int = 8, overwrite: bool = False, progress: bool = True) -> dict:
    """Label `limit` human pairs blind and write metrics.json, calibration.png and report.md."""
    data = load_human_pairs(human)
    pairs = blind_pairs(data.pairs[:limit] if limit else data.pairs, seed)
    engine, constitution, cfg = judge.engine, judge.constitution, judge.config
    out_dir = Path(out_dir)
    stats = getattr(engine, "stats", None)

    def tokens() -> int:
        s = stats() if stats else {}
        return int(s.get("prompt_tokens", 0)) + int(s.get("completion_tokens", 0))

    with OutputLock(out_dir):
        t0, started = tokens(), time.perf_counter()
        result = label_pairs(pairs, judge, out_dir, batch_size=batch_size, overwrite=overwrite, progress=progress)
        seconds = time.perf_counter() - started
        metrics = compute_metrics(result.records, seed=seed)
        previous = {}
        if (out_dir / METRICS).exists():
            try:
                previous = json.loads((out_dir / METRICS).read_text())
            except (OSError, json.JSONDecodeError):
                previous = {}
        if result.written:
            metrics["pairs_per_second"] = result.written / seconds
            metrics["tokens_processed"] = tokens() - t0
            metrics["timed_pairs"] = result.written
        else:  # everything was labeled by an earlier run: keep its timing
            for key in ("pairs_per_second", "tokens_processed", "timed_pairs"):
                metrics[key] = previous.get(key)
        metrics.update({
            "source": str(human), "read": data.total, "skipped": dict(data.skipped), "limit": limit, "seed": seed,
            "failed": result.failed, "constitution": f"{constitution.name} v{constitution.version}",
            "labeler": {"engine": engine.name, "model": engine.model, **cfg.model_dump(mode="json")},
        })
        write_atomic(out_dir / METRICS, json.dumps(metrics, indent=2) + "\n")
        title = (f"{engine.model}, {cfg.mode}" + (", debiased" if cfg.debias and cfg.mode == "pairwise" else "")
                 + (", CoT" if cfg.cot else "") + (f", {cfg.principles} principles" if cfg.principles > 1 else ""))
        plot_calibration(metrics["calibration_bins"], out_dir / CALIBRATION, title)
        write_report(out_dir, metrics, result.records, title)
        entry = read_manifest(out_dir).get("stages", {}).get("label", {})
        update_manifest(out_dir, "label", {**entry, "eval": {k: metrics[k] for k in (
            "n", "accuracy", "accuracy_ci95", "ece", "position_flip_rate", "pairs_per_second")}})
    return metrics


def format_metrics(m: dict, out_dir) -> str:
    def f(v):
        return "n/a" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))

    return (f"eval-labeler: n={m['n']}  accuracy {m['accuracy']:.3f} [{m['accuracy_ci95'][0]:.3f}, "
            f"{m['accuracy_ci95'][1]:.3f}]  ECE {m['ece']:.3f}  Brier {m['brier']:.3f}  "
            f"flip {f(m['position_flip_rate'])}  prefers-first {f(m['prefers_first_rate'])}  "
            f"pairs/s {f(m['pairs_per_second'])}\n"
            f"  wrote {Path(out_dir) / METRICS}, {CALIBRATION}, {REPORT}"
            + (f"\n  {m['failed']} pairs failed; run the same command again to retry them" if m["failed"] else ""))
