"""`python -m benchmarks.lc_sim [--runs N] [--boot B] [--games 32,64,200]`: the length-controlled win
rate (rlaif/eval/ranking.py) on simulated judges whose truth is known.

Each run: `games` prompts; the baseline's reply has L_b ~ N(150, 50) words (at least 10); the
model's is longer by Δ ~ N(60, 80); the baseline's gamed replies (what `rlaif rank` makes with
prompts/lc_verbose.yaml and lc_concise.yaml) are L_b · e^N(log 1.6, 0.25) and L_b · e^N(log 0.6, 0.25).
The judge's verdict on a pair (a, b) is a coin with P(a ≻ b) = σ(q_a − q_b + κ · tanh((L_a − L_b) / 80)):
- length-only: κ = 1.5, q = 0 for everyone: the true LC is 0.5;
- quality-only: κ = 0, q_model = 0.4: the true LC is σ(0.4) = 0.599 (and so is the raw rate).
Reported per judge and size, as means over the runs: the raw win rate; the previous LC (a ridge
λ = 3 on the length weight, no gamed rows; kept here only to compare); AlpacaEval's own
`length_controlled_v1` fit on the same rows (`alpaca_exact=True`: every weight L1-penalised, each
set of games on its own length scale) and how often its CI covers the truth; and the LC `rlaif rank`
reports (model term unpenalised, one length scale), with its sd over runs, how often its 95 %
bootstrap CI (prompts redrawn) covers the truth, and the CI's mean width."""

from __future__ import annotations

import argparse
import time

import numpy as np

from rlaif.eval.ranking import fit_logistic, lc_win_rate

JUDGES = {"length-only": dict(kappa=1.5, quality=0.0), "quality-only": dict(kappa=0.0, quality=0.4)}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def simulate(seed: int, games: int, kappa: float, quality: float) -> dict:
    """One run: the model's and the gamed replies' outcomes against the baseline, and their Δ."""
    rng = np.random.default_rng(seed)
    lb = rng.normal(150, 50, games).clip(10)
    lm = lb + rng.normal(60, 80, games)
    lv = lb * np.exp(rng.normal(np.log(1.6), 0.25, games))
    lc = lb * np.exp(rng.normal(np.log(0.6), 0.25, games))

    def verdicts(l_other, q):
        return (rng.random(games) < _sigmoid(q + kappa * np.tanh((l_other - lb) / 80))).astype(float)

    return {"y": verdicts(lm, quality), "len_model": lm, "len_base": lb,
            "gamed": [{"y": verdicts(lv, 0.0), "delta": lv - lb}, {"y": verdicts(lc, 0.0), "delta": lc - lb}],
            "truth": float(_sigmoid(quality))}


def previous_lc(y, delta, ridge: float = 3.0) -> float:
    """The LC `rlaif rank` reported before: σ(α) of α + β·tanh(Δ/std Δ) with (ridge/2)·β² on β."""
    z = np.tanh(delta / delta.std()) if delta.std() > 0 else np.zeros_like(delta)
    X = np.stack([np.ones_like(z), z - z.mean()], axis=1)
    a, b = fit_logistic(X, y, np.ones_like(y), np.array([0.0, ridge]))
    return float(_sigmoid(a - b * z.mean()))


def measure(judge: str, games: int, runs: int, n_boot: int, seed0: int = 0) -> dict:
    rows = {k: [] for k in ("raw", "previous", "exact", "lc")}
    cover = {"exact": 0, "lc": 0}
    width = {"exact": [], "lc": []}
    truth = None
    for r in range(runs):
        s = simulate(seed0 + r, games, **JUDGES[judge])
        truth = s["truth"]
        rows["raw"].append(s["y"].mean())
        rows["previous"].append(previous_lc(s["y"], s["len_model"] - s["len_base"]))
        for key, exact in (("exact", True), ("lc", False)):
            fit = lc_win_rate(s["y"], s["len_model"], s["len_base"], gamed=s["gamed"], n_boot=n_boot, seed=r,
                              alpaca_exact=exact)
            rows[key].append(fit["lc"])
            lo, hi = fit["lc_ci95"]
            cover[key] += lo <= truth <= hi
            width[key].append(hi - lo)
    out = {"judge": judge, "games": games, "runs": runs, "truth": truth}
    for k, v in rows.items():
        out[f"{k}_mean"], out[f"{k}_sd"] = float(np.mean(v)), float(np.std(v))
    for k in cover:
        out[f"{k}_covers"], out[f"{k}_ci_width"] = cover[k] / runs, float(np.mean(width[k]))
    return out


def table(results: list[dict]) -> str:
    cols = ["judge", "games", "truth", "raw", "previous LC (ridge λ=3)", "AlpacaEval exact: mean", "covers",
            "reported LC: mean", "sd", "95 % CI covers truth", "CI width"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in results:
        cells = [r["judge"], r["games"], f"{r['truth']:.3f}", f"{r['raw_mean']:.3f}", f"{r['previous_mean']:.3f}",
                 f"{r['exact_mean']:.3f}", f"{r['exact_covers']:.0%}", f"{r['lc_mean']:.3f}", f"{r['lc_sd']:.3f}",
                 f"{r['lc_covers']:.0%}", f"{r['lc_ci_width']:.3f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--boot", type=int, default=1000)
    ap.add_argument("--games", default="32,64,200")
    args = ap.parse_args(argv)
    t = time.time()
    results = [measure(judge, int(g), args.runs, args.boot) for judge in JUDGES for g in args.games.split(",")]
    print(table(results))
    print(f"\n{args.runs} runs per row, {args.boot} bootstrap draws each; {time.time() - t:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
