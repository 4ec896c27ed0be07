"""Ranking players (checkpoints) from pairwise judgements: Bradley–Terry ratings with bootstrap CIs,
the win-rate matrix, and the length-controlled win rate. Pure maths over numpy arrays.

A game is (i, j, y): players i and j, and y ∈ [0, 1] the outcome for i — 1 a win, 0 a loss, or a
soft outcome such as a position-debiased judge's p(i's reply ≻ j's reply).

Bradley–Terry. Each player has a strength θ_i and

    P(i beats j) = σ(θ_i − θ_j),   σ(x) = 1 / (1 + e^(−x)).

The fit maximises the (soft-outcome) log-likelihood with a very weak ridge,

    ℓ(θ) = Σ_games [ y · log σ(θ_i − θ_j) + (1 − y) · log σ(θ_j − θ_i) ]  −  (λ/2) · Σ_k θ_k²,

λ = 1e-3 by default. ℓ only sees differences, so θ is defined up to a constant; the ridge picks
the solution with Σ θ = 0 (each game's gradient is +r for i and −r for j, so the data gradient
sums to zero over players and the optimum has λ · Σθ = 0). It also keeps θ finite for a player
that won every game. With a few hundred games per player it moves θ by well under 1 %. The fit is
Newton's method with backtracking on the pair totals (games between the same two players only
enter through their count and their summed outcome).

Elo scale: E_i = 1000 + (400 / ln 10) · θ_i, so that P(i beats j) = 1 / (1 + 10^(−(E_i − E_j)/400)),
the usual Elo curve: 100 points apart ≈ 64 % expected score. The mean rating is 1000 (sum to zero);
`reference=k` shifts every rating (and every bootstrap draw) so that player k sits at 1000 instead.

Bootstrap 95 % CIs: draw the games (or, with `groups`, whole groups such as prompts, since the
games on one prompt are not independent) with replacement, B times with a seeded generator, refit,
anchor the same way, and take the 2.5 and 97.5 percentiles of each player's rating. All B refits run
at once as a batch.

Length-controlled win rate (after AlpacaEval 2, Dubois et al. 2024, "Length-Controlled AlpacaEval",
and its GLM in tatsu-lab/alpaca_eval, src/alpaca_eval/metrics/glm_winrate.py). An AI judge tends to
prefer the longer reply, so a raw win rate mixes quality with verbosity. For the games of player a
against player b, fit a logistic model of the judge's preference on the standardised length
difference,

    logit P(a ≻ b) = α + β · z,   z = tanh(Δ / s),   Δ = len_a − len_b,   s = std(Δ) over those games,

by maximising  Σ [y · log σ(α + βz) + (1 − y) · log σ(−α − βz)]  −  (λ/2) · β²,   λ = 3.

The length-controlled win rate is the model's prediction at equal lengths (Δ = 0, z = 0), σ(α); the
raw win rate is the mean of y. As in AlpacaEval, Δ is divided by its standard deviation and passed
through tanh, so a few very long replies cannot dominate. z is centred for the Newton solve; α is
not penalised, so that shift moves α and nothing else — the prediction at z = 0 is unchanged.

The penalty on β is the regularisation toward the baseline: the baseline model is the one with no
length term, whose LC is the raw win rate, and the data have to earn any length correction.
AlpacaEval ties the length weight down with extra data instead: it refits with the baseline's own
answers prompted to be verbose or concise (weight 0.2 split over the two), where quality is fixed
and only length moves, plus an L1 penalty chosen by cross-validation. We have no such gamed copies,
so the anchor is a fixed Gaussian prior β ~ N(0, 1/λ). It matters when one side is longer in
nearly every game: then z hardly varies, α + β·z is known only near z̄, and σ(α) is an
extrapolation to z = 0 whose spread grows without bound as the spread of z shrinks. In a
simulation with 64 prompts, a judge that ignores length, a true win rate of 0.6 and a length gap
of N(60, 30), the near-unpenalised fit (λ = 1e-3) gave an LC sd of 0.23 against the raw rate's 0.064
(95 % CIs 0.75 wide); λ = 3 gives 0.078, with the mean still 0.60 (tests/test_ranking.py). The price:
a large true length effect is removed slightly less than fully (with 3000 games and a judge whose
logit moves by 3 across the tanh range, β comes out ~5 % low). With Δ = 0 everywhere the fit gives
σ(α) = mean(y) exactly; a judge that only rewards length gives α ≈ 0, LC ≈ 0.5.

Length unit: whatever the caller counts. `rlaif rank` counts words (whitespace-split);
AlpacaEval counts characters. Dividing Δ by its own standard deviation makes the fit free of the
unit's scale, so the two differ only where characters per word differ between the sides. (The
AlpacaEval GLM also has a per-instruction difficulty term; with one judgement per prompt per pair
here it is left out.)
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)
ELO_BASE = 1000.0
RIDGE = 1e-3
LC_RIDGE = 3.0  # λ on the length coefficient of the LC fit (see the module docstring)


def to_elo(theta):
    return ELO_BASE + ELO_SCALE * np.asarray(theta, dtype=float)


# ------------------------------------------------------------------ weighted logistic regression


def _log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def _objective(beta, X, pos, total, ridge):
    eta = beta @ X.T  # (B, G)
    return (pos * _log_sigmoid(eta) + (total - pos) * _log_sigmoid(-eta)).sum(1) - 0.5 * (ridge * beta ** 2).sum(1)


def fit_logistic(X, pos, total, ridge, iters: int = 100, tol: float = 1e-10):
    """Maximise Σ_g [pos_g · log σ(x_g·β) + (total_g − pos_g) · log σ(−x_g·β)] − ½ Σ_k ridge_k β_k².

    X: (G, K) design; pos, total: (G,) or (B, G) — B independent fits (bootstrap draws) at once;
    pos = Σ weight · y and total = Σ weight over the games a row stands for. Returns β, (K,) or (B, K).
    Newton steps, each halved until the objective does not fall (it is concave)."""
    X = np.asarray(X, dtype=float)
    single = np.ndim(pos) == 1
    pos, total = np.atleast_2d(pos).astype(float), np.atleast_2d(total).astype(float)
    ridge = np.broadcast_to(np.asarray(ridge, dtype=float), (X.shape[1],))
    B, K = pos.shape[0], X.shape[1]
    outer = (X[:, :, None] * X[:, None, :]).reshape(len(X), K * K)  # x_g x_gᵀ, flattened
    beta = np.zeros((B, K))
    f = _objective(beta, X, pos, total, ridge)
    for _ in range(iters):
        s = 1.0 / (1.0 + np.exp(-(beta @ X.T)))
        grad = (pos - total * s) @ X - ridge * beta  # (B, K)
        curv = total * s * (1 - s)  # (B, G)
        hess = (curv @ outer).reshape(B, K, K) + np.diag(ridge)  # −∇²: Σ_g curv_g x_g x_gᵀ + diag(ridge)
        # a touch of damping keeps the solve defined when a side won every game (unpenalised α grows without
        # bound there, as the MLE does); it changes the steps, not where the gradient is zero
        damp = 1e-9 * (1.0 + np.trace(hess, axis1=1, axis2=2))[:, None, None] * np.eye(K)
        step = np.linalg.solve(hess + damp, grad[..., None])[..., 0]
        t = np.ones((beta.shape[0], 1))
        for _ in range(40):
            f_new = _objective(beta + t * step, X, pos, total, ridge)
            bad = f_new < f - 1e-12 * np.abs(f)
            if not bad.any():
                break
            t[bad] /= 2
        beta, f = beta + t * step, f_new
        if np.abs(t * step).max() < tol:
            break
    return beta[0] if single else beta


# ------------------------------------------------------------------ Bradley–Terry


def _games(i, j, y, n: int | None):
    i, j, y = np.asarray(i, dtype=int), np.asarray(j, dtype=int), np.asarray(y, dtype=float)
    if not (i.shape == j.shape == y.shape and i.ndim == 1 and len(i)):
        raise ValueError("games: i, j and y must be equal-length non-empty 1-D sequences")
    if np.any(i == j):
        raise ValueError("games: a player cannot play itself")
    if np.any((y < 0) | (y > 1)) or not np.all(np.isfinite(y)):
        raise ValueError("games: outcomes must lie in [0, 1]")
    n = int(max(i.max(), j.max()) + 1) if n is None else n
    return i, j, y, n


def _pair_design(i, j, y, n):
    """Orient every game as (lo, hi) with the outcome for lo; one design row per unordered pair."""
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    y_lo = np.where(i < j, y, 1.0 - y)
    keys, inverse = np.unique(lo * n + hi, return_inverse=True)
    X = np.zeros((len(keys), n))
    X[np.arange(len(keys)), keys // n] = 1.0
    X[np.arange(len(keys)), keys % n] = -1.0
    return X, inverse, y_lo


def _totals(weights, inverse, y_lo, n_pairs):
    """Per-pair (Σ w·y, Σ w) for game weights (B, G)."""
    onehot = np.zeros((len(inverse), n_pairs))
    onehot[np.arange(len(inverse)), inverse] = 1.0
    return (weights * y_lo) @ onehot, weights @ onehot


def fit_bradley_terry(i, j, y, n: int | None = None, ridge: float = RIDGE, weights=None) -> np.ndarray:
    """θ (sum to zero) from games; `weights` (G,) or (B, G) gives B weighted refits at once."""
    i, j, y, n = _games(i, j, y, n)
    X, inverse, y_lo = _pair_design(i, j, y, n)
    w = np.ones(len(i)) if weights is None else np.asarray(weights, dtype=float)
    pos, total = _totals(np.atleast_2d(w), inverse, y_lo, X.shape[0])
    theta = fit_logistic(X, pos, total, ridge)
    return theta[0] if np.ndim(w) == 1 else theta


def bt_standard_errors(i, j, y, theta, n: int | None = None, ridge: float = RIDGE) -> np.ndarray:
    """Asymptotic standard errors of the sum-to-zero θ from the observed information:
    Cov = C · (Xᵀ diag(s(1−s)) X + λI)⁻¹ · C with C = I − 11ᵀ/n (the centring)."""
    i, j, y, n = _games(i, j, y, n)
    X = np.zeros((len(i), n))
    X[np.arange(len(i)), i], X[np.arange(len(i)), j] = 1.0, -1.0
    s = 1.0 / (1.0 + np.exp(-(X @ theta)))
    info = X.T @ (X * (s * (1 - s))[:, None]) + ridge * np.eye(n)
    C = np.eye(n) - 1.0 / n
    return np.sqrt(np.diag(C @ np.linalg.inv(info) @ C))


def bootstrap_weights(n_games: int, n_boot: int, seed: int, groups=None) -> np.ndarray:
    """(B, G) counts: how often each game is drawn; with `groups`, whole groups are drawn."""
    rng = np.random.default_rng(seed)
    if groups is None:
        return rng.multinomial(n_games, np.full(n_games, 1.0 / n_games), size=n_boot).astype(float)
    labels, g = np.unique(np.asarray(groups), return_inverse=True)
    draws = rng.multinomial(len(labels), np.full(len(labels), 1.0 / len(labels)), size=n_boot).astype(float)
    return draws[:, g]


def rank_players(i, j, y, names: Sequence[str], *, n_boot: int = 1000, seed: int = 0, groups=None,
                 reference: int | None = None, ridge: float = RIDGE) -> dict:
    """Elo-scale BT ratings with bootstrap 95 % CIs (percentile), sorted best first."""
    n = len(names)
    i, j, y, n = _games(i, j, y, n)
    theta = fit_bradley_terry(i, j, y, n, ridge)
    boot = fit_bradley_terry(i, j, y, n, ridge, weights=bootstrap_weights(len(i), n_boot, seed, groups))
    if reference is not None:
        theta, boot = theta - theta[reference], boot - boot[:, [reference]]
    elo, elo_boot = to_elo(theta), to_elo(boot)
    lo, hi = np.percentile(elo_boot, [2.5, 97.5], axis=0)
    se = bt_standard_errors(i, j, y, theta, n, ridge) * ELO_SCALE
    games = np.bincount(np.concatenate([i, j]), minlength=n)
    rows = [{"name": names[k], "elo": float(elo[k]), "ci95": [float(lo[k]), float(hi[k])],
             "bootstrap_se": float(elo_boot[:, k].std(ddof=1)), "asymptotic_se": float(se[k]),
             "theta": float(theta[k]), "games": int(games[k])} for k in range(n)]
    order = sorted(range(n), key=lambda k: -elo[k])
    for r, k in enumerate(order, 1):
        rows[k]["rank"] = r
    return {"players": [rows[k] for k in order], "scale": f"Elo = {ELO_BASE:g} + 400/ln10 · θ",
            "anchor": "mean 1000 (sum to zero)" if reference is None else f"{names[reference]} = 1000",
            "bootstrap": {"draws": n_boot, "seed": seed, "unit": "game" if groups is None else "group"},
            "ridge": ridge}


# ------------------------------------------------------------------ win rates


def win_rate_matrix(i, j, y, n: int) -> dict:
    """M[a][b]: over the games of a against b, the mean outcome for a (`mean_p`), and the share won
    outright (`win_rate`: y > ½ counts 1, y = ½ counts ½); None where a and b never met."""
    i, j, y, n = _games(i, j, y, n)
    mean_p = [[None] * n for _ in range(n)]
    wins = [[None] * n for _ in range(n)]
    games = [[0] * n for _ in range(n)]
    for a in range(n):
        for b in range(n):
            if a == b:
                continue
            ya = np.concatenate([y[(i == a) & (j == b)], 1.0 - y[(i == b) & (j == a)]])
            games[a][b] = int(len(ya))
            if len(ya):
                mean_p[a][b] = float(ya.mean())
                wins[a][b] = float(np.where(ya > 0.5, 1.0, np.where(ya == 0.5, 0.5, 0.0)).mean())
    return {"mean_p": mean_p, "win_rate": wins, "games": games}


def lc_win_rate(y, len_a, len_b, ridge: float = LC_RIDGE, weights=None) -> dict:
    """Length-controlled win rate of a over b: σ(α) of logit P(a ≻ b) = α + β · tanh(Δ / std Δ),
    with the penalty (ridge/2)·β² (module docstring). `weights` (B, G) refits B bootstrap draws
    (s stays the std of all the games); then `lc` and `raw` are arrays."""
    y = np.asarray(y, dtype=float)
    delta = np.asarray(len_a, dtype=float) - np.asarray(len_b, dtype=float)
    scale = float(delta.std())
    z = np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)
    centre = float(z.mean())
    X = np.stack([np.ones_like(z), z - centre], axis=1)
    w = np.ones_like(y) if weights is None else np.asarray(weights, dtype=float)
    alpha_c, beta = fit_logistic(X, w * y, w, np.array([0.0, ridge])).T
    alpha = alpha_c - beta * centre  # the logit at z = 0, i.e. at equal lengths
    lc = 1.0 / (1.0 + np.exp(-alpha))
    if weights is not None:
        return {"lc": lc, "raw": (w * y).sum(-1) / w.sum(-1)}
    return {"lc": float(lc), "raw": float(y.mean()), "alpha": float(alpha), "length_coef": float(beta),
            "length_scale": scale, "length_ridge": ridge, "mean_length_diff": float(delta.mean()),
            "games": int(len(y))}


def lc_win_rate_ci(y, len_a, len_b, n_boot: int = 1000, seed: int = 0, groups=None) -> dict:
    """`lc_win_rate` plus percentile 95 % CIs of the LC and raw win rates (games or groups redrawn).
    The length scale s is held at the full sample's value in every draw."""
    point = lc_win_rate(y, len_a, len_b)
    w = bootstrap_weights(len(np.atleast_1d(y)), n_boot, seed, groups)
    draws = lc_win_rate(y, len_a, len_b, weights=w)
    ci = {k: [float(v) for v in np.percentile(draws[k], [2.5, 97.5])] for k in ("lc", "raw")}
    return {**point, "lc_ci95": ci["lc"], "raw_ci95": ci["raw"]}
