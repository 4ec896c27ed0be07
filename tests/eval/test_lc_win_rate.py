"""The length-controlled win rate (rlaif/eval/ranking.py, after AlpacaEval 2's GLM): simulated judges
whose truth is known (benchmarks/lc_sim.py at test size), the fit's optimality conditions, the
prompt-difficulty term, AlpacaEval-format records, and equality with AlpacaEval's own fitting code
(alpaca-eval installed into a separate throwaway venv, never into .venv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rlaif.eval.ranking import (alpaca_eval_lc, cv_folds, fit_l1_logistic, instruction_difficulty, lc_win_rate)

from benchmarks.lc_sim import JUDGES, simulate  # noqa: E402


def _runs(judge: str, games: int, runs: int, n_boot: int, seed0: int = 0):
    out = []
    for r in range(runs):
        s = simulate(seed0 + r, games, **JUDGES[judge])
        fit = lc_win_rate(s["y"], s["len_model"], s["len_base"], gamed=s["gamed"], n_boot=n_boot, seed=r)
        out.append((fit, s))
    return out


# ------------------------------------------------------------------ simulated judges


def test_a_length_only_judge_gets_lc_one_half_at_64_games():
    """Δ ~ N(60, 80) words, P(model ≻ baseline) = σ(1.5 · tanh(Δ/80)): the true LC is 0.5. The raw
    rate is ~0.64 and the previous ridge LC said ~0.556; this one's mean is within 0.02 of 0.5 and
    its 95 % CI covers 0.5 in at least 90 % of the seeded runs."""
    runs = _runs("length-only", 64, 100, n_boot=300)
    lc = np.array([f["lc"] for f, _ in runs])
    raw = np.array([f["raw"] for f, _ in runs])
    covered = np.mean([f["lc_ci95"][0] <= 0.5 <= f["lc_ci95"][1] for f, _ in runs])
    assert raw.mean() > 0.62  # the judge does reward length
    assert abs(lc.mean() - 0.5) < 0.02, lc.mean()
    assert covered >= 0.90, covered
    assert all(f["length_coef"] > 0 for f, _ in runs[:20])


def test_a_quality_only_judge_keeps_its_win_rate():
    """The model is better (σ(0.4) = 0.599) and longer, the judge ignores length: the LC is the raw
    win rate, run by run, and its CI covers the truth."""
    runs = _runs("quality-only", 64, 60, n_boot=300, seed0=500)
    lc = np.array([f["lc"] for f, _ in runs])
    raw = np.array([f["raw"] for f, _ in runs])
    truth = runs[0][1]["truth"]
    assert abs(lc.mean() - truth) < 0.02 and abs(lc.mean() - raw.mean()) < 0.01, (lc.mean(), raw.mean())
    assert np.median(np.abs(lc - raw)) < 0.01
    assert np.mean([f["lc_ci95"][0] <= truth <= f["lc_ci95"][1] for f, _ in runs]) >= 0.85


def test_lc_equals_the_raw_rate_at_equal_lengths_and_stays_finite_on_a_sweep():
    rng = np.random.default_rng(0)
    y = rng.random(50)
    fit = lc_win_rate(y, np.full(50, 40), np.full(50, 40))
    assert fit["lc"] == pytest.approx(y.mean(), abs=1e-6) and fit["raw"] == pytest.approx(y.mean())
    assert fit["variant"] == "AlpacaEval length_controlled_minimal, model term unpenalised"
    sweep = lc_win_rate(np.ones(20), rng.integers(5, 50, 20), rng.integers(5, 50, 20), n_boot=50)
    assert sweep["lc"] > 0.99 and np.isfinite(sweep["theta"]) and sweep["lc_ci95"][0] > 0.99


def test_the_gamed_rows_hold_the_length_weight_when_the_model_is_always_longer():
    """Every one of the model's replies is longer (Δ ~ N(120, 25)), so its own games hardly vary in
    tanh(Δ/s); a length-only judge. The gamed rows, on both sides of Δ = 0, pin the length weight:
    with them the LC is near 0.5, without them it drifts off toward the raw rate."""
    with_gamed, without = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        lb = rng.normal(150, 50, 64).clip(10)
        d = rng.normal(120, 25, 64)
        y = (rng.random(64) < 1 / (1 + np.exp(-1.5 * np.tanh(d / 80)))).astype(float)
        gamed = []
        for factor in (1.6, 0.6):
            dg = lb * np.exp(rng.normal(np.log(factor), 0.25, 64)) - lb
            gamed.append({"y": (rng.random(64) < 1 / (1 + np.exp(-1.5 * np.tanh(dg / 80)))).astype(float), "delta": dg})
        with_gamed.append(lc_win_rate(y, lb + d, lb, gamed=gamed)["lc"])
        without.append(lc_win_rate(y, lb + d, lb)["lc"])
    assert abs(np.mean(with_gamed) - 0.5) < 0.04, np.mean(with_gamed)
    assert np.mean(np.abs(np.array(with_gamed) - 0.5)) < np.mean(np.abs(np.array(without) - 0.5))


# ------------------------------------------------------------------ the fit itself


def test_the_l1_fit_meets_its_optimality_conditions():
    """At the optimum of Σ f_k|β_k| + C Σ w·loss: the loss gradient g_k = −f_k sign β_k where β_k ≠ 0,
    and |g_k| ≤ f_k where β_k = 0 — for several C at once, with an unpenalised coordinate."""
    rng = np.random.default_rng(1)
    X = np.column_stack([np.tanh(rng.normal(0, 1, 200)), rng.normal(0, 1, 200), np.ones(200)])
    y = 1 / (1 + np.exp(-(X @ np.array([1.0, 0.05, 0.4]) + rng.normal(0, 0.5, 200))))
    w = rng.uniform(0.1, 1.0, 200)
    Cs = np.array([1e-3, 0.05, 1.0, 100.0])
    pen = np.array([1.0, 1.0, 0.0])
    betas = fit_l1_logistic(X, y, np.tile(w, (4, 1)), Cs, pen)
    for beta, C in zip(betas, Cs):
        g = C * (w * (1 / (1 + np.exp(-(X @ beta))) - y)) @ X
        for k in range(3):
            if beta[k] != 0:
                assert g[k] == pytest.approx(-pen[k] * np.sign(beta[k]), abs=1e-6)
            else:
                assert abs(g[k]) <= pen[k] + 1e-9
    assert np.all(betas[0, :2] == 0) and betas[-1, 1] != 0  # heavy penalty zeroes the penalised weights


def test_prompt_difficulty_is_recovered_from_several_players():
    """Four players share 80 prompts whose difficulty is known; the judge ignores length. The joint
    fit's d_x follow the truth, and each player's LC stays at its raw rate."""
    rng = np.random.default_rng(7)
    n = 80
    d = rng.normal(0, 1.2, n)
    players = []
    for q in (-0.3, 0.2, 0.5, 0.8):
        delta = rng.normal(30, 60, n)
        y = (rng.random(n) < 1 / (1 + np.exp(-(q + d)))).astype(float)
        players.append({"y": y, "delta": delta, "prompts": list(range(n))})
    diff = instruction_difficulty(players)
    got = np.array([diff[k] for k in range(n)])
    assert np.corrcoef(got, d)[0, 1] > 0.6
    for p in players:
        fit = lc_win_rate(p["y"], p["delta"], np.zeros(n), prompts=p["prompts"], difficulty=diff)
        assert fit["difficulty_coef"] > 0 and abs(fit["lc"] - p["y"].mean()) < 0.04, fit
        assert "noreg" in fit["variant"]


def test_cv_folds_are_group_kfolds_for_one_row_groups():
    assert list(cv_folds(7, 5)) == [1, 0, 4, 3, 2, 1, 0]


# ------------------------------------------------------------------ AlpacaEval records


def _alpaca_data(seed: int, n: int = 120, quality: float = 0.3, hard: bool = False):
    """AlpacaEval-shaped annotations (output_1 the baseline) of a judge that likes length, the
    baseline's verbose and concise records, and a difficulty per instruction."""
    rng = np.random.default_rng(seed)
    words = "alpha beta gamma delta epsilon zeta eta theta".split()

    def text(k):
        return " ".join(rng.choice(words, max(int(k), 1)))

    lb = rng.normal(120, 40, n).clip(5)
    lengths = {"model": lb + rng.normal(40, 50, n), "base_verbose": lb * 1.6 + rng.normal(0, 20, n),
               "base_concise": lb * 0.5 + rng.normal(0, 10, n)}
    diff = rng.normal(0, 1, n)
    base = [text(k) for k in lb]

    def record(x, name, q):
        o2 = text(lengths[name][x])
        p = 1 / (1 + np.exp(-(q + 0.5 * diff[x] + 1.2 * np.tanh((len(o2) - len(base[x])) / 300))))
        p = float(rng.random() < p) if hard else float(p)
        return {"instruction": f"instruction {x}", "output_1": base[x], "output_2": o2, "preference": 1 + p,
                "generator_1": "base", "generator_2": name}

    ann = [record(x, "model", quality) for x in range(n)]
    gamed = [record(x, name, 0.0) for name in ("base_verbose", "base_concise") for x in range(n)]
    return ann, gamed, {f"instruction {x}": float(diff[x]) for x in range(n)}


def test_alpaca_eval_records_give_the_same_fit_as_the_arrays():
    ann, gamed, diff = _alpaca_data(0)
    fit = alpaca_eval_lc(ann, gamed, diff)
    assert fit["variant"] == "AlpacaEval length_controlled_v1" and fit["length_unit"] == "characters"
    assert fit["games"] == 120 and fit["gamed_games"] == 240 and fit["raw"] > fit["lc"]
    aligned = alpaca_eval_lc(ann, gamed, [diff[a["instruction"]] for a in ann])
    assert aligned["lc"] == fit["lc"]
    ours = alpaca_eval_lc(ann, gamed, diff, alpaca_exact=False, n_boot=200)
    assert "unpenalised" in ours["variant"] and ours["lc_ci95"][0] <= ours["lc"] <= ours["lc_ci95"][1]
    draws = [dict(a, preference=0) for a in ann[:3]] + [dict(a, preference=None) for a in ann[3:5]] + ann[5:]
    assert alpaca_eval_lc(draws)["games"] == 118  # 0 is a draw (½); None is left out
    with pytest.raises(ValueError, match="annotation record 2: preference 3"):
        alpaca_eval_lc(ann[:2] + [dict(ann[2], preference=3)])
    with pytest.raises(ValueError, match="difficulty: no value for instruction"):
        alpaca_eval_lc(ann, gamed, {k: v for k, v in list(diff.items())[1:]})


# AlpacaEval's GLM, run on the same records in its own venv: their featurisation, design matrices and
# fit_LogisticRegressionCV; only the download of the gamed rows is replaced by a local file.
_REFERENCE = r'''
import json, sys, warnings
import pandas as pd
warnings.filterwarnings("ignore")
from alpaca_eval.metrics import glm_winrate as G

data = json.load(sys.stdin)
pd.DataFrame(data["gamed_rows"]).to_csv(data["gamed_csv"], index=False)
G.hf_hub_download = lambda *a, **k: data["gamed_csv"]
info = dict(G.GLM_INFO[data["glm"]])
ann = pd.DataFrame(data["annotations"])
metrics = G.get_length_controlled_winrate(ann, save_weights_dir=None, is_warn_extreme_changes=False, glm_info=info)
XY, X, sw = G._get_featurized_data(ann, formula=info["formula"],
                                   regularize_to_baseline_lambda=info["regularize_to_baseline_lambda"])
model = G.fit_LogisticRegressionCV(XY, "preference", is_ytrue_proba=True, sample_weight=sw, **info["kwargs"])
print(json.dumps({"lc": metrics["length_controlled_winrate"] / 100, "C": float(model.C_[0]),
                  "coef": dict(zip(X.columns, model.coef_[0].tolist()))}))
'''
ALPACA_EVAL = "alpaca-eval==0.6.6"


@pytest.fixture(scope="module")
def alpaca_python(tmp_path_factory):
    """A venv holding alpaca-eval (kept under ~/.cache so later runs reuse it); skipped if it cannot
    be installed here."""
    found = os.environ.get("RLAIF_ALPACA_EVAL_PYTHON")
    if found:
        return found
    venv = Path.home() / ".cache" / "rlaif" / "test-venvs" / ALPACA_EVAL.replace("==", "-")
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import alpaca_eval.metrics.glm_winrate"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return str(python)
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        r = subprocess.run([str(python), "-m", "pip", "install", "-q", ALPACA_EVAL], capture_output=True, text=True,
                           timeout=900)
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"could not build a venv with {ALPACA_EVAL}: {e}")
    if r.returncode != 0 or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip(f"pip could not install {ALPACA_EVAL} (no package index reachable?): {r.stderr.strip()[-300:]}")
    return str(python)


def _reference(python: str, ann, gamed, diff, glm: str, tmp: Path) -> dict:
    """AlpacaEval's df_gamed layout: each variant's rows in instruction order (the first variant's
    first, which is where their code reads the difficulty from), Δ = len(output_1) − len(output_2)
    over the variant's own std (ddof 1), the preference already in [0, 1]."""
    rows = []
    for name in ("base_verbose", "base_concise"):
        recs = [g for g in gamed if g["generator_2"] == name]
        delta = np.array([len(g["output_1"]) - len(g["output_2"]) for g in recs], dtype=float)
        std = delta / delta.std(ddof=1)
        rows += [{"model": name, "index": x, "preference": g["preference"] - 1, "std_delta_len": std[x],
                  "instruction_difficulty": diff[g["instruction"]], "not_gamed_baseline": False}
                 for x, g in enumerate(recs)]
    payload = {"annotations": ann, "gamed_rows": rows, "gamed_csv": str(tmp / "df_gamed.csv"), "glm": glm}
    r = subprocess.run([python, "-c", _REFERENCE], input=json.dumps(payload), capture_output=True, text=True,
                       timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


@pytest.mark.parametrize("seed,n,hard", [(0, 120, False), (1, 120, True), (3, 24, True)])
def test_the_fit_equals_alpaca_evals_own_glm(alpaca_python, tmp_path, seed, n, hard):
    """Their length_controlled_v1 (and _noreg) on a data set built here: the same C from their
    cross-validation, the same weights and LC to liblinear's tolerance."""
    ann, gamed, diff = _alpaca_data(seed, n=n, hard=hard, quality=0.3 if n > 40 else 0.1)
    for glm, records in (("length_controlled_v1", gamed), ("length_controlled_noreg", ())):
        ref = _reference(alpaca_python, ann, gamed, diff, glm, tmp_path)
        ours = alpaca_eval_lc(ann, records, diff)
        assert ours["C"] == pytest.approx(ref["C"]), (glm, ours, ref)
        assert ours["lc"] == pytest.approx(ref["lc"], abs=2e-4), (glm, ours["lc"], ref["lc"])
        coef = ref["coef"]
        # their Δ is baseline − model, ours model − baseline: the length weight flips sign
        assert -ours["length_coef"] == pytest.approx(coef["np.tanh(std_delta_len)"], abs=2e-3)
        assert ours["difficulty_coef"] == pytest.approx(coef["instruction_difficulty"], abs=2e-3)
        assert ours["theta"] == pytest.approx(coef["not_gamed_baseline.astype(float)"], abs=2e-3)
