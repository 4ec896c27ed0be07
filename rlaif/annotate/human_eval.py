"""`rlaif eval-labeler --human labels.sqlite|human.jsonl`: the judge against your own annotators.

The judge labels each human-labeled pair once, blind (a seeded coin per pair decides which reply it
sees as a, as for HH-RLHF pairs), through the labeler stage, with the principle the people were
shown when the judge's constitution has it. Then, beside each other:

    judge vs each annotator    agreement with a 95 % CI and Cohen's kappa, on that person's pairs
    judge vs the majority      agreement, calibration, position and length bias (the HH-RLHF report's
                               metrics, the majority side standing in for "human-chosen")
    human ceiling              pairwise human agreement, Cohen's kappa per two annotators, Fleiss' kappa
    leave-one-out              AlpacaEval's human agreement: each person held out against the majority
                               of the others, and the judge against the same majorities

Writes OUT/labels.jsonl (the judge's labels, resumable), OUT/metrics.json, OUT/report.md and
OUT/calibration.png (against the majority).
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from rlaif.annotate import agreement as A
from rlaif.annotate.export import read_human_jsonl
from rlaif.annotate.store import SQLITE_MAGIC, Store
from rlaif.constitution import Constitution
from rlaif.errors import UserError
from rlaif.eval.labeler_report import CALIBRATION, METRICS, REPORT, compute_metrics, plot_calibration
from rlaif.records import record_id, write_atomic
from rlaif.runner import OutputLock
from rlaif.judge import Judge
from rlaif.stages.labeler import label_pairs


def is_annotation_source(spec) -> bool:
    """A database made by `rlaif annotate`, or a JSONL written by `rlaif annotate export`."""
    path = Path(str(spec))
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(SQLITE_MAGIC):
        return True
    first = head.split(b"\n", 1)[0]
    try:
        rec = json.loads(first)
    except ValueError:
        return False
    return isinstance(rec, dict) and "pair_id" in rec and "annotator" in rec


def load_labels(spec) -> list[dict]:
    path = Path(str(spec))
    with open(path, "rb") as f:
        is_db = f.read(16) == SQLITE_MAGIC
    labels = Store(path).labels() if is_db else read_human_jsonl(path)
    labels = [x for x in labels if x["status"] == "label" and x["p_a"] is not None]
    if not labels:
        raise UserError(f"{path}: no labels that state a preference yet (skips and 'both bad' alone do not)")
    return labels


def judge_inputs(pairs: dict[str, dict], constitution: Constitution, seed: int) -> tuple[list[dict], dict, int]:
    """Pairs for the labeler with seeded blind sides; {pair_id: swapped}; pairs whose principle the
    judge's constitution lacks (the judge then draws its own)."""
    ids = {q.id for q in constitution.principles}
    out, swapped, foreign = [], {}, 0
    for n, (pid, p) in enumerate(pairs.items(), 1):
        swap = random.Random(int(record_id("blind", seed, pid), 16)).random() < 0.5
        a, b = (p["b"], p["a"]) if swap else (p["a"], p["b"])
        rec = {"prompt": p["prompt"], "a": a, "b": b, "given": "human", "source_line": n, "source_id": pid}
        if p.get("principle") in ids:
            rec["principle"] = p["principle"]
        else:
            foreign += 1
        out.append(rec)
        swapped[pid] = swap
    return out, swapped, foreign


def evaluate(labels: list[dict], judge_records: list[dict], swapped: dict[str, bool], seed: int = 0) -> dict:
    """All the numbers, from human labels and the judge's labels of the same pairs."""
    judge = {r["source_id"]: (1.0 - r["p_a"]) if swapped[r["source_id"]] else r["p_a"] for r in judge_records}
    items = A.by_item(labels)
    majority_recs = []
    for r in judge_records:
        maj = A.majority(list(items.get(r["source_id"], {}).values()))
        if maj is not None:  # the majority's side, in the judge record's (blind) terms
            side_a = (maj == 1) != swapped[r["source_id"]]
            majority_recs.append({**r, "human_chosen": "a" if side_a else "b"})
    out = {"pairs": len(items), "labels": sum(len(v) for v in items.values()),
           "annotators": A.judge_vs_annotators(items, judge, seed=seed),
           "majority": compute_metrics(majority_recs, seed=seed) if majority_recs else None,
           "majority_ties": sum(1 for v in items.values() if A.majority(list(v.values())) is None),
           "humans": A.human_agreement(items, seed=seed),
           "leave_one_out": A.leave_one_out(items, judge, seed=seed)}
    decided = [(int(judge[pid] > 0.5), A.majority(list(v.values()))) for pid, v in items.items()
               if pid in judge and judge[pid] != 0.5 and A.majority(list(v.values())) is not None]
    out["majority_cohen_kappa"] = A.cohen_kappa(*zip(*decided)) if decided else None
    return out


def _f(v, digits: int = 3) -> str:
    return "n/a" if v is None else (f"{v:.{digits}f}" if isinstance(v, float) else str(v))


def _ci(v, ci) -> str:
    return "n/a" if v is None else f"{v:.3f} [{_f(ci[0])}, {_f(ci[1])}]"


def write_report(out_dir: Path, m: dict, title: str) -> None:
    h, loo, maj = m["humans"], m["leave_one_out"], m["majority"]
    judge_kappas = [a["cohen_kappa"] for a in m["annotators"].values() if a["cohen_kappa"] is not None]
    judge_mean = [a["agreement"] for a in m["annotators"].values()]
    lines = [f"# Judge vs your annotators — {title}", "",
             f"Source {m['source']}: {m['pairs']} pairs, {m['labels']} preference labels from "
             f"{len(m['annotators'])} annotators; constitution {m['constitution']}"
             + (f" ({m['principle_not_in_constitution']} pairs asked a question it lacks; the judge drew its own)"
                if m["principle_not_in_constitution"] else "") + ".", "",
             "## The judge next to the human ceiling", "",
             "| measure | judge | humans (ceiling) |", "|---|---|---|",
             f"| leave-one-out agreement with the majority of the others (n={loo['n']}) | "
             f"{_ci(loo['judge'], loo['judge_ci95'])} | {_ci(loo['human'], loo['human_ci95'])} |",
             f"| agreement with one annotator (judge: mean over annotators; humans: pairwise) | "
             f"{_f(sum(judge_mean) / len(judge_mean) if judge_mean else None)} | "
             f"{_ci(h['pairwise_agreement'], h['pairwise_agreement_ci95'])} |",
             f"| Cohen's kappa (judge: mean over annotators; humans: mean over two-annotator pairs) | "
             f"{_f(sum(judge_kappas) / len(judge_kappas) if judge_kappas else None)} | {_f(h['cohen_kappa_mean'])} |",
             f"| Fleiss' kappa (humans, {h['items_with_two_or_more']} pairs with two or more labels) | | "
             f"{_f(h['fleiss_kappa'])} |", "",
             "## Judge vs each annotator", "", "| annotator | pairs | agreement [95 % CI] | Cohen's kappa |",
             "|---|---|---|---|"]
    lines += [f"| {name} | {a['n']} | {_ci(a['agreement'], a['agreement_ci95'])} | {_f(a['cohen_kappa'])} |"
              for name, a in m["annotators"].items()]
    if maj:
        lines += [f"| **majority** ({m['majority_ties']} even splits left out) | {maj['n']} | "
                  f"{_ci(maj['accuracy'], maj['accuracy_ci95'])} | {_f(m['majority_cohen_kappa'])} |", "",
                  f"Against the majority: ECE {_f(maj['ece'])}, Brier {_f(maj['brier'])}, position flip rate "
                  f"{_f(maj['position_flip_rate'])}, prefers longer {_f(maj['prefers_longer_rate'])} "
                  f"(people: {_f(maj['human_prefers_longer_rate'])}).", "", f"![calibration]({CALIBRATION})"]
    if h["annotator_pairs"]:
        lines += ["", "## Human–human", "", "| annotators | shared pairs | agreement | Cohen's kappa |", "|---|---|---|---|"]
        lines += [f"| {p['annotators'][0]} · {p['annotators'][1]} | {p['n']} | {_f(p['agreement'])} | "
                  f"{_f(p['cohen_kappa'])} |" for p in h["annotator_pairs"]]
    write_atomic(out_dir / REPORT, "\n".join(lines) + "\n")


def run_human_eval(human, judge: Judge, out_dir, *, limit: int | None = None, seed: int = 0, batch_size: int = 8,
                   overwrite: bool = False, progress: bool = True) -> dict:
    engine, constitution, cfg = judge.engine, judge.constitution, judge.config
    labels = load_labels(human)
    pairs: dict[str, dict] = {}
    for x in labels:
        pairs.setdefault(x["pair_id"], x["pair"])
    if limit:
        keep = set(list(pairs)[:limit])
        pairs = {k: v for k, v in pairs.items() if k in keep}
        labels = [x for x in labels if x["pair_id"] in keep]
    inputs, swapped, foreign = judge_inputs(pairs, constitution, seed)
    out_dir = Path(out_dir)
    with OutputLock(out_dir):
        started = time.perf_counter()
        result = label_pairs(inputs, judge, out_dir, batch_size=batch_size, overwrite=overwrite, progress=progress)
        m = evaluate(labels, result.records, swapped, seed=seed)
        m.update({"source": str(human), "limit": limit, "seed": seed, "failed": result.failed,
                  "seconds": round(time.perf_counter() - started, 2),
                  "principle_not_in_constitution": foreign,
                  "constitution": f"{constitution.name} v{constitution.version}",
                  "labeler": {"engine": engine.name, "model": engine.model, **cfg.model_dump(mode="json")}})
        write_atomic(out_dir / METRICS, json.dumps(m, indent=2) + "\n")
        title = f"{engine.model}, {cfg.mode}" + (", debiased" if cfg.debias and cfg.mode == "pairwise" else "")
        if m["majority"]:
            plot_calibration(m["majority"]["calibration_bins"], out_dir / CALIBRATION, title + " vs majority")
        write_report(out_dir, m, title)
    return m


def format_summary(m: dict, out_dir) -> str:
    loo, h = m["leave_one_out"], m["humans"]
    maj = m["majority"]
    return (f"eval-labeler (human annotations): {m['pairs']} pairs, {m['labels']} labels, "
            f"{len(m['annotators'])} annotators\n"
            f"  judge vs majority {_ci(maj['accuracy'], maj['accuracy_ci95']) if maj else 'n/a'}\n"
            f"  leave-one-out: judge {_ci(loo['judge'], loo['judge_ci95'])}  humans {_ci(loo['human'], loo['human_ci95'])}\n"
            f"  humans: pairwise agreement {_f(h['pairwise_agreement'])}, Cohen's kappa {_f(h['cohen_kappa_mean'])}, "
            f"Fleiss' kappa {_f(h['fleiss_kappa'])}\n"
            f"  wrote {Path(out_dir) / METRICS}, {REPORT}" + (f", {CALIBRATION}" if maj else "")
            + (f"\n  {m['failed']} pairs failed; run the same command again to retry them" if m["failed"] else ""))
