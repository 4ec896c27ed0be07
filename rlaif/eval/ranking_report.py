"""Turn round-robin judgements into the ranking's numbers (`summarise`) and its files
(`write_reports`): ranking.json, ranking.md, ranking.html, ratings.png, win_rate.png.

Numbers (see rlaif/eval/ranking.py for the maths):
- Bradley–Terry ratings on the Elo scale (mean 1000), 95 % CIs from redrawing whole prompts;
- the win-rate matrix: row a, column b is the share of prompts on which the judge preferred a's
  reply to b's (p > ½ counts 1, p = ½ counts ½), next to the mean p;
- length-controlled (LC) win rates: for each pair, and for every checkpoint against the baseline
  (the first checkpoint given), with a 95 % CI; length is counted in words.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rlaif.eval.ranking import lc_win_rate, lc_win_rate_ci, rank_players, win_rate_matrix
from rlaif.plotting import pyplot
from rlaif.records import write_atomic


def summarise(names: list[str], kinds: list[str], replies: list[dict], prompts: list[dict], games: list[dict],
              *, n_boot: int = 1000, seed: int = 0, outcomes: str = "soft") -> dict:
    """`outcomes`: "soft" fits the judge's p itself; "hard" its verdict (p > ½: 1, p = ½: ½, else 0),
    which spreads the ratings of a judge whose p stays near ½ but leans the same way every time."""
    n = len(names)
    i = np.array([g["i"] for g in games])
    j = np.array([g["j"] for g in games])
    y = np.array([g["p"] for g in games], dtype=float)
    if outcomes == "hard":
        y = np.where(y > 0.5, 1.0, np.where(y == 0.5, 0.5, 0.0))
    elif outcomes != "soft":
        raise ValueError(f"outcomes {outcomes!r}: expected soft or hard")
    la = np.array([g["len_a"] for g in games], dtype=float)
    lb = np.array([g["len_b"] for g in games], dtype=float)
    groups = np.array([g["prompt_index"] for g in games])
    ranking = rank_players(i, j, y, names, n_boot=n_boot, seed=seed, groups=groups)
    matrix = win_rate_matrix(i, j, y, n)

    lc = [[None] * n for _ in range(n)]
    for a in range(n):
        for b in range(a + 1, n):
            m = (i == a) & (j == b)
            if m.any():
                fit = lc_win_rate(y[m], la[m], lb[m])
                lc[a][b], lc[b][a] = fit["lc"], 1.0 - fit["lc"]

    by_name = {r["name"]: r for r in ranking["players"]}
    for k, name in enumerate(names):
        row = by_name[name]
        row["kind"] = kinds[k]
        ranked = {p["id"] for p in prompts}
        lengths = [len(t.split()) for pid, t in replies[k].items() if pid in ranked]
        row["prompts_answered"] = len(lengths)
        row["mean_words"] = float(np.mean(lengths)) if lengths else None
        mine = (i == k) | (j == k)
        y_k = np.where(i[mine] == k, y[mine], 1.0 - y[mine])
        row["win_rate_vs_field"] = float(np.mean(np.where(y_k > 0.5, 1.0, np.where(y_k == 0.5, 0.5, 0.0))))
        row["mean_p_vs_field"] = float(y_k.mean())
        if k == 0:
            row.update(raw_vs_baseline=None, lc_vs_baseline=None, lc_vs_baseline_ci95=None)
            continue
        m = (i == 0) & (j == k)  # pairs are (i < j): the baseline is always side a
        if not m.any():
            continue
        fit = lc_win_rate_ci(1.0 - y[m], lb[m], la[m], n_boot=n_boot, seed=seed, groups=groups[m])
        row.update(raw_vs_baseline=fit["raw"], raw_vs_baseline_ci95=fit["raw_ci95"], lc_vs_baseline=fit["lc"],
                   lc_vs_baseline_ci95=fit["lc_ci95"], length_coef_vs_baseline=fit["length_coef"],
                   mean_length_diff_vs_baseline=fit["mean_length_diff"])
    return {**ranking, "names": names, "baseline": names[0], "outcomes": outcomes,
            "win_rate_matrix": matrix, "lc_win_rate_matrix": lc}


# ------------------------------------------------------------------ files


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    os.replace(tmp, path)
    return path


def _short(names: list[str], width: int = 28) -> list[str]:
    return [s if len(s) <= width else "…" + s[-(width - 1):] for s in names]


def plot_ratings(info: dict, path: Path) -> Path:
    """Elo ratings with 95 % CI error bars, best at the top."""
    plt = pyplot()
    rows = info["players"][::-1]
    elo = np.array([r["elo"] for r in rows])
    lo = elo - np.array([r["ci95"][0] for r in rows])
    hi = np.array([r["ci95"][1] for r in rows]) - elo
    fig, ax = plt.subplots(figsize=(6, 0.45 * len(rows) + 1.4))
    ax.errorbar(elo, range(len(rows)), xerr=[lo, hi], fmt="o", color="C0", ecolor="0.4", capsize=3)
    ax.axvline(1000, color="0.7", linewidth=0.8, linestyle="--")
    ax.set_yticks(range(len(rows)), _short([r["name"] for r in rows]))
    ax.set_xlabel("Bradley–Terry rating, Elo scale (mean 1000); bars: bootstrap 95 % CI")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def plot_win_rates(info: dict, path: Path) -> Path:
    """Heatmap: row a, column b = a's win rate against b."""
    plt = pyplot()
    names = info["names"]
    m = np.array([[np.nan if v is None else v for v in row] for row in info["win_rate_matrix"]["win_rate"]])
    fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2.5, 0.8 * len(names) + 1.6))
    im = ax.imshow(m, cmap="RdBu", vmin=0, vmax=1)
    for a in range(len(names)):
        for b in range(len(names)):
            if not np.isnan(m[a, b]):
                ax.text(b, a, f"{m[a, b]:.2f}", ha="center", va="center", fontsize=9,
                        color="white" if abs(m[a, b] - 0.5) > 0.3 else "black")
    short = _short(names, 18)
    ax.set_xticks(range(len(names)), short, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), short)
    ax.set_xlabel("opponent")
    ax.set_ylabel("checkpoint")
    fig.colorbar(im, ax=ax, label="win rate (row vs column)")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path


def _f(v, digits: int = 3) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def _ci(v, digits: int = 3) -> str:
    return "–" if not v else f"{v[0]:.{digits}f}–{v[1]:.{digits}f}"


def table_rows(info: dict) -> list[dict]:
    return [{"rank": r["rank"], "checkpoint": r["name"], "Elo": round(r["elo"]), "95 % CI": _ci(r["ci95"], 0),
             "games": r["games"], "mean words": _f(r.get("mean_words"), 1),
             "win rate vs field": _f(r["win_rate_vs_field"]),
             f"raw vs {info['baseline']}": _f(r.get("raw_vs_baseline")),
             f"LC vs {info['baseline']}": _f(r.get("lc_vs_baseline")),
             "LC 95 % CI": _ci(r.get("lc_vs_baseline_ci95"))} for r in info["players"]]


def markdown(info: dict) -> str:
    rows = table_rows(info)
    cols = list(rows[0])
    s = info["setup"]
    lines = ["# Ranking", "",
             f"Judge {s['judge']}, constitution {s['constitution']}, {s['n_prompts']} prompts from {s['prompts']}, "
             f"{s['pairs_judged']} pairwise judgements ({s['debias']}), fitted on {info['outcomes']} outcomes. {info['scale']}, {info['anchor']}; CIs from "
             f"{info['bootstrap']['draws']} bootstrap draws of whole prompts (seed {info['bootstrap']['seed']}). "
             f"LC: length-controlled win rate against the baseline {info['baseline']} (length in words).", "",
             *([f"Judge check: {s['judge_check']['message']}", ""] if isinstance(s.get("judge_check"), dict) else []),
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
    names = info["names"]
    lines += ["", "## Win rates (row vs column)", "", "| | " + " | ".join(names) + " |",
              "|---|" + "|".join("---" for _ in names) + "|"]
    for a, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(_f(v) for v in info["win_rate_matrix"]["win_rate"][a]) + " |")
    lines += ["", "## Length-controlled win rates (row vs column)", "", "| | " + " | ".join(names) + " |",
              "|---|" + "|".join("---" for _ in names) + "|"]
    for a, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(_f(v) for v in info["lc_win_rate_matrix"][a]) + " |")
    return "\n".join(lines) + "\n"


def html_report(info: dict, ratings_png: Path, heatmap_png: Path) -> str:
    from rlaif.eval.html import HtmlReport

    s = info["setup"]
    rep = HtmlReport("Ranking", f"judge {s['judge']} · constitution {s['constitution']} · {s['n_prompts']} prompts · "
                     f"{s['pairs_judged']} judgements")
    check = s.get("judge_check")
    if isinstance(check, dict) and check.get("status") in ("at_chance", "below_chance"):
        rep.banner("The judge fails its check on this constitution, so these ratings carry no signal (or the "
                   "wrong one): " + check["message"], "alarm")
    sec = rep.section("Ratings", "ratings")
    sec.append(rep.table(table_rows(info)))
    sec.append(rep.para(f"{info['scale']}, {info['anchor']}: 100 points apart means about a 64 % expected score. "
                        f"95 % CIs: {info['bootstrap']['draws']} bootstrap draws of whole prompts. LC: the win rate "
                        f"against {info['baseline']} at equal length, from a logistic fit of the judge's preference "
                        "on tanh(length difference / its standard deviation).", note=True))
    sec.append(rep.image(ratings_png))
    sec = rep.section("Win rates", "win-rates")
    sec.append(rep.image(heatmap_png))
    names = info["names"]
    for title, m in (("length-controlled win rate (row vs column)", info["lc_win_rate_matrix"]),
                     ("mean judge p (row vs column)", info["win_rate_matrix"]["mean_p"])):
        sec.append(rep.para(title))
        sec.append(rep.table([{"checkpoint": a, **{b: ("–" if v is None else v) for b, v in zip(names, row)}}
                              for a, row in zip(names, m)]))
    sec = rep.section("Setup", "setup")
    sec.append(rep.table(dict(s)))
    return rep.render()


def write_reports(info: dict, out: Path) -> None:
    out = Path(out)
    ratings = plot_ratings(info, out / "ratings.png")
    heatmap = plot_win_rates(info, out / "win_rate.png")
    write_atomic(out / "ranking.md", markdown(info))
    write_atomic(out / "ranking.html", html_report(info, ratings, heatmap))
    write_atomic(out / "ranking.json", json.dumps(info, indent=2) + "\n")
