"""Turn round-robin judgements into the ranking's numbers (`summarise`) and its files
(`write_reports`): ranking.json, ranking.md, ranking.html, ratings.png, win_rate.png.

Numbers (see rlaif/eval/ranking.py for the maths):
- Bradley–Terry ratings on the Elo scale (mean 1000), 95 % CIs from redrawing whole prompts;
- the win-rate matrix: row a, column b is the share of prompts on which the judge preferred a's
  reply to b's (p > ½ counts 1, p = ½ counts ½), next to the mean p;
- length-controlled (LC) win rates: every checkpoint against the baseline (the first checkpoint
  given) with a 95 % CI, by AlpacaEval 2's GLM with the baseline's own verbose and concise replies
  as the regulariser and, with two or more checkpoints besides the baseline, a prompt-difficulty
  term; the row-vs-column LC matrix follows from those fits. Length is counted in words.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from rlaif.eval.ranking import (GAMED_VARIANTS, instruction_difficulty, lc_win_rate, rank_players,
                                win_rate_matrix)
from rlaif.plotting import pyplot
from rlaif.records import write_atomic


def summarise(names: list[str], kinds: list[str], replies: list[dict], prompts: list[dict], games: list[dict],
              *, gamed_games: list[dict] | None = None, n_boot: int = 1000, seed: int = 0,
              outcomes: str = "soft") -> dict:
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

    by_name = {r["name"]: r for r in ranking["players"]}
    lc_info, fits = length_controlled(n, i, j, y, la, lb, groups, gamed_games or [], outcomes, n_boot=n_boot, seed=seed)
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
        fit = fits.get(k)
        if fit is None:
            continue
        row.update(raw_vs_baseline=fit["raw"], raw_vs_baseline_ci95=fit["raw_ci95"], lc_vs_baseline=fit["lc"],
                   lc_vs_baseline_ci95=fit["lc_ci95"], length_coef_vs_baseline=fit["length_coef"],
                   mean_length_diff_vs_baseline=fit["mean_length_diff"], lc_variant=fit["variant"],
                   lc_fit={key: fit[key] for key in ("theta", "length_coef", "difficulty_coef", "C", "length_scale",
                                                      "games", "gamed_games")})
    return {**ranking, "names": names, "baseline": names[0], "outcomes": outcomes,
            "win_rate_matrix": matrix, "lc_win_rate_matrix": lc_matrix(n, fits, lc_info.get("difficulty_values")),
            "lc": {k: v for k, v in lc_info.items() if k != "difficulty_values"}}


def _hard(p):
    return np.where(p > 0.5, 1.0, np.where(p == 0.5, 0.5, 0.0))


def length_controlled(n, i, j, y, la, lb, groups, gamed_games, outcomes, *, n_boot, seed):
    """Every checkpoint's LC fit against the baseline (checkpoint 0, always side a of its games):
    the gamed rows (the baseline against its verbose and concise replies) as the regulariser, and the
    prompts' difficulty fitted jointly once two or more checkpoints meet the baseline."""
    gamed = []
    for variant in GAMED_VARIANTS:
        rows = [g for g in gamed_games if g["variant"] == variant]
        if rows:
            p = np.array([1.0 - g["p"] for g in rows])  # the gamed reply's outcome against the baseline's
            gamed.append({"variant": variant, "y": _hard(p) if outcomes == "hard" else p,
                          "delta": np.array([g["len_b"] - g["len_a"] for g in rows], dtype=float),
                          "prompts": [g["prompt_index"] for g in rows]})
    players = {}
    for k in range(1, n):
        m = (i == 0) & (j == k)
        if m.any():
            players[k] = {"y": 1.0 - y[m], "delta": lb[m] - la[m], "prompts": list(groups[m])}
    difficulty = None
    if len(players) >= 2:
        difficulty = instruction_difficulty(list(players.values()) + [{**g, "gamed": True} for g in gamed])
    fits = {k: lc_win_rate(g["y"], g["delta"], np.zeros(len(g["delta"])), prompts=g["prompts"], gamed=gamed,
                           difficulty=difficulty, n_boot=n_boot, seed=seed) for k, g in players.items()}
    info = {"variant": next(iter(fits.values()))["variant"] if fits else None,
            "gamed_baseline": {g["variant"]: len(g["y"]) for g in gamed} or "none (the baseline is a responses "
                              "file, or generation of its gamed replies was turned off)",
            "difficulty": (f"fitted jointly over the {len(players)} checkpoints' games against the baseline"
                           if difficulty is not None else "left out (one checkpoint against the baseline)"),
            "difficulty_values": difficulty}
    return info, fits


def lc_matrix(n, fits, difficulty):
    """LC of row a over column b from each one's fit against the baseline (AlpacaEval's predicted
    win-rate matrix): mean over prompts of σ(θ_a − θ_b + (ψ_a − ψ_b) · d_x); the baseline has θ = ψ = 0."""
    theta = {0: 0.0, **{k: f["theta"] for k, f in fits.items()}}
    psi = {0: 0.0, **{k: f["difficulty_coef"] or 0.0 for k, f in fits.items()}}
    d = np.array(list(difficulty.values())) if difficulty else np.zeros(1)
    m = [[None] * n for _ in range(n)]
    for a in theta:
        for b in theta:
            if a != b:
                m[a][b] = float(np.mean(1.0 / (1.0 + np.exp(-(theta[a] - theta[b] + (psi[a] - psi[b]) * d)))))
    return m


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


def _lc_note(info: dict) -> str:
    lc = info.get("lc") or {}
    gamed = lc.get("gamed_baseline")
    gamed = (", ".join(f"{n} {v}" for v, n in gamed.items()) + " gamed-baseline judgements"
             if isinstance(gamed, dict) else f"gamed baseline: {gamed}")
    return (f"{lc.get('variant')}: logit p = γ·tanh(Δwords/sd) + ψ·difficulty + θ, reported at Δ = 0; "
            f"{gamed}; prompt difficulty {lc.get('difficulty')}")


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
             f"LC: length-controlled win rate against the baseline {info['baseline']} (length in words; "
             f"{_lc_note(info)}).", "",
             *([f"Judge check: {s['judge_check']['message']}", ""] if isinstance(s.get("judge_check"), dict) else []),
             "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(str(r[c]).replace("|", "\\|") for c in cols) + " |" for r in rows]
    names = info["names"]
    lines += ["", "## Win rates (row vs column)", "", "| | " + " | ".join(names) + " |",
              "|---|" + "|".join("---" for _ in names) + "|"]
    for a, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(_f(v) for v in info["win_rate_matrix"]["win_rate"][a]) + " |")
    lines += ["", "## Length-controlled win rates (row vs column, from each checkpoint's fit against the baseline)", "",
              "| | " + " | ".join(names) + " |",
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
                        f"against {info['baseline']} at equal length: {_lc_note(info)}.", note=True))
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
