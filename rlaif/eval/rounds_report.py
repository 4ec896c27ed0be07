"""The report's "Iterative rounds" section: per round what was sampled, labelled and trained, how far
the policy moved from the start (KL) and what that bought (proxy and independent rewards), the
reward-vs-KL plot across rounds, and the ranking of every checkpoint with its length-controlled
win rates (from OUT/rounds/rounds.json and OUT/rounds/ranking/)."""

from __future__ import annotations

import json
from pathlib import Path

ROUND_COLUMNS = ("round", "prompts", "samples", "preferences", "no_pair", "steps", "loss_end", "reference",
                 "kl", "reward", "independent_reward", "mean_words")


def _pm(row: dict, key: str) -> str:
    """`mean ± standard error`, or – where there is no value."""
    v, se = row.get(key), row.get(f"{key}_se")
    if v is None:
        return "–"
    return f"{v:.3f}" + (f"\u00a0±\u00a0{se:.3f}" if se else "")  # kept on one line


def _cell(row: dict, key: str, out: Path):
    if key in ("kl", "reward", "independent_reward"):
        return _pm(row, key)
    value = row.get(key)
    if value is None:
        return "–"
    return _short(value, out) if key == "reference" else value


def _short(model: str, out: Path) -> str:
    try:
        return str(Path(model).relative_to(out))
    except ValueError:
        return model


def rounds_section(rep, out: Path, metrics: dict) -> list[str]:
    sec = rep.section("Iterative rounds")
    path = out / "rounds" / "rounds.json"
    if not path.exists():
        sec.append(rep.para("No iterative rounds in this pipeline.", note=True))
        return sec
    info = json.loads(path.read_text())
    columns = [k for k in ROUND_COLUMNS if k != "independent_reward"
               or any(r.get(k) is not None for r in info["rounds"])]
    rows = [{k: _cell(r, k, out) for k in columns} for r in info["rounds"]]
    sec.append(rep.para(f"{len(info['rounds']) - 1} rounds of {info['trainer'].upper()} on {info['pairing']} pairs; "
                        f"each round's reference: {'the policy it starts from' if info['reference'] == 'previous' else 'the start'}"
                        f"; start: {_short(info['start'], out)}. Evaluated on {info['held_out_prompts']} held-out "
                        "prompts."))
    sec.append(rep.table(rows, columns))
    sec.append(rep.para("Round 0 is the start. kl: KL(policy ‖ start) per response in nats, a sampled estimate "
                        "(samples at temperature 1 on the held-out prompts; ± its standard error). reward: the pipeline judge's direct score "
                        "(0–1) of the same samples — the proxy the rounds optimise. independent_reward: a second "
                        "judge's score where rounds.eval.independent_judge names one; over-optimisation shows as "
                        "the proxy rising while it stalls or falls. no_pair: prompts whose samples were judged "
                        "alike (best_worst) or pairs judged at exactly ½ (all_pairs).", note=True))
    if info.get("plot") and Path(info["plot"]).exists():
        sec.append(rep.image(Path(info["plot"])))
    metrics["rounds"] = info["rounds"]

    ranking = out / "rounds" / "ranking" / "ranking.json"
    if ranking.exists():
        from rlaif.eval.ranking_report import table_rows

        rank = json.loads(ranking.read_text())
        s = rank["setup"]
        sec.append(rep.para(f"Ranking of every checkpoint: {s['pairs_judged']} round-robin judgements by {s['judge']} "
                            f"on {s['n_prompts']} held-out prompts (greedy replies, both orders), Bradley–Terry "
                            f"ratings on the Elo scale with bootstrap 95 % CIs; LC: length-controlled win rate against "
                            f"{rank['baseline']} ({(rank.get('lc') or {}).get('variant') or 'no checkpoint met it'}; "
                            "the start's own verbose and concise replies as the regulariser; rlaif/eval/ranking.py)."))
        sec.append(rep.table(table_rows(rank)))
        for png in ("ratings.png", "win_rate.png"):
            if (out / "rounds" / "ranking" / png).exists():
                sec.append(rep.image(out / "rounds" / "ranking" / png))
        sec.append(rep.para("Full tables: rounds/ranking/ranking.md and ranking.html.", note=True))
        metrics["ranking"] = {r["name"]: {k: r.get(k) for k in ("rank", "elo", "ci95", "lc_vs_baseline",
                                                                 "lc_vs_baseline_ci95", "raw_vs_baseline",
                                                                 "raw_vs_baseline_ci95", "mean_words", "lc_variant")}
                              for r in rank["players"]}
    return sec
