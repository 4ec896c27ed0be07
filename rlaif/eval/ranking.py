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

Length-controlled win rates: the second half of this file (AlpacaEval 2's GLM), with its own notes.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ELO_SCALE = 400.0 / math.log(10.0)
ELO_BASE = 1000.0
RIDGE = 1e-3


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


# ------------------------------------------------------------------ length-controlled win rate
#
# After AlpacaEval 2 (Dubois et al. 2024, "Length-Controlled AlpacaEval"; the GLM of tatsu-lab/
# alpaca_eval, src/alpaca_eval/metrics/glm_winrate.py, `length_controlled_v1`). An AI judge tends to
# prefer the longer reply, so a raw win rate mixes quality with verbosity. The judge's preference
# for the model's reply over the baseline's on prompt x is fitted as
#
#     logit P(model ≻ baseline) = γ · tanh(Δ / s)  +  ψ · d_x  +  θ · 1[row is the model's]
#
#   Δ = len(model reply) − len(baseline reply), s a standard deviation of Δ (ddof 1; below);
#   d_x = the prompt's difficulty (fitted once over every player, below), ψ its weight for this model;
#   θ = the model's own term: what is left once length and difficulty are accounted for.
#
# The length-controlled win rate is the model's prediction at equal length, averaged over prompts:
#
#     LC = mean_x σ(θ + ψ · d_x)          (σ(θ) without the difficulty term);  raw = mean of y.
#
# Regularisation toward the baseline. Besides the model's own games, the fit sees the baseline
# against its own replies when prompted to be verbose and to be concise (`rlaif rank` makes them:
# prompts/lc_verbose.yaml, prompts/lc_concise.yaml, the instructions AlpacaEval gave GPT-4 Turbo).
# Those rows share γ and ψ but not θ (1[row is the model's] = 0 there): their quality is the
# baseline's, only their length moved, so they tie the length weight down from both sides of Δ = 0
# even when the model is longer on every prompt. They carry weight 0.2 in all (0.1 per variant) per
# prompt, so their pull grows with the data instead of being a fixed prior.
#
# The fit is theirs: soft labels, no intercept, an L1 penalty,
#
#     minimise  Σ_k f_k |β_k| + C · Σ_rows w · [−y log σ(x·β) − (1 − y) log σ(−x·β)],
#
# (liblinear's objective), with C picked from logspace(−4, 4, 10) by 5-fold cross-validation on the
# weighted log loss (rows assigned to folds as sklearn's GroupKFold does for one-row groups: row r of
# N goes to fold (N − 1 − r) mod 5, gamed rows first), then refitted on all rows. We solve it with
# proximal Newton steps (coordinate descent on each quadratic model, then a backtracking line
# search), to a tighter tolerance than liblinear's, so the two agree to its precision.
#
# Two variants (`alpaca_exact`):
# - AlpacaEval's own (`alpaca_eval_lc` by default; tests/eval/test_lc_win_rate.py checks it against
#   alpaca-eval 0.6.6): f_k = 1 for every weight, θ included, and each set of games (the model's,
#   each gamed variant) scaled by its own s.
# - `rlaif rank`'s (the default of `lc_win_rate`): θ unpenalised (f = 0) and one s for every row,
#   the std of all their Δ together. At the tens of prompts a rank or a round has, cross-validation
#   often picks a small C, and an L1 penalty on θ then pulls a real quality gap toward 0.5: in
#   benchmarks/lc_sim.py a judge that sees only quality (true 0.599) got 0.553 from AlpacaEval's fit
#   at 64 prompts, its CI covering the truth in 45 % of runs, against 0.588 and 93 % here. Scaling
#   the gamed rows by their own s gives γ a different meaning on their rows than on the model's:
#   where the model is longer with little spread (Δ ~ N(120, 25) words) their fit leaves ~0.07 of a
#   pure length bias as "quality"; one scale removes it (tests/eval/test_lc_win_rate.py).
#
# Instruction difficulty, where several players share the prompts (≥ 2 besides the baseline): one
# joint fit over every player's games against the baseline (gamed copies included), with a length
# weight and a bias per player and an effect per prompt, d_x (AlpacaEval's
# notebooks/instruction_difficulty.ipynb). They fit it with the same L1/CV fit over ~800 prompts
# and dozens of models; with tens of prompts and a few players that fit zeroes every prompt (and
# takes minutes), so d_x gets a N(0, 1) prior instead: each prompt's effect rests on a few games
# however many prompts there are, which is where a fixed prior belongs. With one player the term is
# left out: it could only be fitted on the very games it then explains.
#
# CIs: prompts redrawn with replacement (a prompt's gamed rows come with it), refitted with C, the
# length scales and d_x held at the full sample's values. (AlpacaEval's own `lc_standard_error` is
# the spread of the per-prompt predictions, which is 0 without a difficulty term; it is no CI.) Length unit: whatever the caller counts
# (`rlaif rank`: words; AlpacaEval: characters); dividing by s makes the fit free of its scale.

LC_CS = np.logspace(-4, 4, 10)  # sklearn's LogisticRegressionCV(Cs=10) grid
LC_FOLDS = 5
GAMED_WEIGHT = 0.2  # the baseline's gamed rows, split evenly over the variants
GAMED_VARIANTS = ("verbose", "concise")
_EPS = 1e-15  # AlpacaEval's clip in the CV log loss


def _l1_objective(beta, X, y, w, C, pen):
    eta = beta @ X.T
    loss = -(y * _log_sigmoid(eta) + (1 - y) * _log_sigmoid(-eta))
    return (pen * np.abs(beta)).sum(-1) + C * (w * loss).sum(-1)


def fit_l1_logistic(X, y, w, C, penalty=None, iters: int = 200, sweeps: int = 30, tol: float = 1e-10) -> np.ndarray:
    """argmin Σ_k f_k |β_k| + C Σ_g w_g [−y_g log σ(x_g·β) − (1 − y_g) log σ(−x_g·β)]   (no intercept),
    f = `penalty` (default all 1: liblinear's ‖β‖₁; 0 leaves a weight unpenalised).

    X: (G, K); y: (G,) soft labels in [0, 1]; w: (G,) or (B, G); C: scalar or (B,). B fits at once.
    Proximal Newton: each step minimises the quadratic model of the loss plus the exact L1 term by
    cyclic coordinate descent (soft thresholding), then halves until the objective falls enough."""
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    single = np.ndim(w) == 1 and np.ndim(C) == 0
    w = np.atleast_2d(np.asarray(w, dtype=float))
    C = np.broadcast_to(np.asarray(C, dtype=float).reshape(-1), (max(w.shape[0], np.size(C)),)).copy()
    w = np.broadcast_to(w, (len(C), X.shape[0]))
    B, K = len(C), X.shape[1]
    pen = np.ones(K) if penalty is None else np.asarray(penalty, dtype=float)
    beta = np.zeros((B, K))
    f = _l1_objective(beta, X, y, w, C, pen)
    for _ in range(iters):
        s = 1.0 / (1.0 + np.exp(-(beta @ X.T)))
        g = C[:, None] * ((w * (s - y)) @ X)
        H = np.einsum("bg,gk,gl->bkl", C[:, None] * w * s * (1 - s), X, X)
        d = np.zeros_like(beta)
        for _ in range(sweeps):
            moved = 0.0
            for k in range(K):
                a = H[:, k, k] + 1e-12
                b = g[:, k] + np.einsum("bl,bl->b", H[:, k, :], d) - a * d[:, k]
                u = beta[:, k] - b / a
                z = np.sign(u) * np.maximum(np.abs(u) - pen[k] / a, 0.0)
                moved = max(moved, float(np.abs(z - beta[:, k] - d[:, k]).max()))
                d[:, k] = z - beta[:, k]
            if moved < tol:
                break
        decrease = (g * d).sum(1) + (pen * (np.abs(beta + d) - np.abs(beta))).sum(1)  # ≤ 0
        t = np.ones(B)
        for _ in range(50):
            f_new = _l1_objective(beta + t[:, None] * d, X, y, w, C, pen)
            bad = f_new > f + 1e-4 * t * decrease + 1e-13 * np.abs(f)
            if not bad.any():
                break
            t[bad] /= 2
        beta, f = beta + t[:, None] * d, f_new
        if np.abs(t[:, None] * d).max() < tol:
            break
    return beta[0] if single else beta


def cv_folds(n_rows: int, n_splits: int = LC_FOLDS) -> np.ndarray:
    """sklearn GroupKFold's assignment when every group is one row (equal sizes, stable order)."""
    return (n_rows - 1 - np.arange(n_rows)) % n_splits


def _cv_loss(beta, X, y, w):
    q = np.clip(1.0 / (1.0 + np.exp(-(beta @ X.T))), _EPS, 1 - _EPS)
    return -(w * (y * np.log(q) + (1 - y) * np.log(1 - q))).mean(-1)


def fit_l1_logistic_cv(X, y, w, Cs=LC_CS, n_splits: int = LC_FOLDS, penalty=None) -> tuple[np.ndarray, float]:
    """`fit_l1_logistic` with C chosen by cross-validated weighted log loss (summed over folds; the
    first, i.e. smallest, C wins a tie), then refitted on every row. Returns (β, C)."""
    X, y, w = np.asarray(X, dtype=float), np.asarray(y, dtype=float), np.asarray(w, dtype=float)
    Cs = np.asarray(Cs, dtype=float)
    n_splits = min(n_splits, len(y))
    if n_splits < 2:
        C = float(Cs[-1])
        return fit_l1_logistic(X, y, w, C, penalty), C
    fold = cv_folds(len(y), n_splits)
    train = np.stack([np.where(fold == f, 0.0, w) for f in range(n_splits) for _ in Cs])
    betas = fit_l1_logistic(X, y, train, np.tile(Cs, n_splits), penalty).reshape(n_splits, len(Cs), -1)
    loss = np.zeros(len(Cs))
    for f in range(n_splits):
        m = fold == f
        loss += _cv_loss(betas[f], X[m], y[m], w[m])
    C = float(Cs[int(np.argmin(loss))])
    return fit_l1_logistic(X, y, w, C, penalty), C


def length_scale(delta) -> float:
    """std Δ as pandas computes it (ddof 1); 0 for fewer than two games."""
    delta = np.asarray(delta, dtype=float)
    return float(delta.std(ddof=1)) if len(delta) > 1 else 0.0


def length_term(delta, scale: float | None = None) -> np.ndarray:
    """tanh(Δ / s), s = `scale` or Δ's own std; 0 where s is 0."""
    delta = np.asarray(delta, dtype=float)
    scale = length_scale(delta) if scale is None else scale
    return np.tanh(delta / scale) if scale > 0 else np.zeros_like(delta)


def _as_games(y, delta, prompts) -> dict:
    y, delta = np.asarray(y, dtype=float), np.asarray(delta, dtype=float)
    if not (y.shape == delta.shape and y.ndim == 1 and len(y)):
        raise ValueError("LC: outcomes and length differences must be equal-length non-empty 1-D sequences")
    if np.any((y < 0) | (y > 1)) or not np.all(np.isfinite(y)):
        raise ValueError("LC: outcomes must lie in [0, 1]")
    prompts = list(range(len(y))) if prompts is None else list(prompts)
    if len(prompts) != len(y):
        raise ValueError("LC: one prompt key per game expected")
    return {"y": y, "delta": delta, "prompts": prompts}


DIFFICULTY_RIDGE = 1.0  # a N(0, 1) prior on each prompt's logit effect


def instruction_difficulty(players: Sequence[dict], ridge: float = DIFFICULTY_RIDGE) -> dict:
    """d_x per prompt from one joint fit over every player's games against the baseline.

    `players`: one dict per player (gamed copies of the baseline included) with `y` (the player's
    outcomes against the baseline), `delta` (its length minus the baseline's) and `prompts` (the
    prompt key of each game). Model: logit y = a_player + b_player · tanh(Δ/s_player) + d_x, every
    game weight 1; the prompt effects d_x carry a Gaussian prior (ridge 1), the players' terms the
    weak ridge of the ratings. Returns {prompt key: d_x}."""
    keys = sorted({k for p in players for k in p["prompts"]}, key=str)
    col = {k: c for c, k in enumerate(keys)}
    n_players = len(players)
    X, y = [], []
    for a, p in enumerate(players):
        t = length_term(p["delta"])
        for g, key in enumerate(p["prompts"]):
            x = np.zeros(2 * n_players + len(keys))
            x[a], x[n_players + a], x[2 * n_players + col[key]] = 1.0, t[g], 1.0
            X.append(x)
        y.append(np.asarray(p["y"], dtype=float))
    y = np.concatenate(y)
    penalty = np.r_[np.full(2 * n_players, RIDGE), np.full(len(keys), ridge)]
    beta = fit_logistic(np.array(X), y, np.ones_like(y), penalty)
    return {k: float(beta[2 * n_players + col[k]]) for k in keys}


def _lc_design(model: dict, gamed: Sequence[dict], difficulty: dict | None, own_scales: bool):
    """Rows (gamed first, then the model's), their labels, weights and prompt keys; and the test rows
    (the model's prompts at Δ = 0). `own_scales`: every set of games (the model's, each gamed
    variant) over its own std (AlpacaEval); else all over one std, of every row's Δ together."""
    parts = [(g, GAMED_WEIGHT / len(gamed), 0.0) for g in gamed] + [(model, 1.0, 1.0)]
    pooled = length_scale(np.concatenate([g["delta"] for g, _, _ in parts]))
    X, y, w, keys = [], [], [], []
    for games, weight, own in parts:
        t = length_term(games["delta"], None if own_scales else pooled)
        d = [difficulty[k] for k in games["prompts"]] if difficulty is not None else None
        for g, key in enumerate(games["prompts"]):
            X.append([t[g], *([d[g]] if d is not None else []), own])
        y.append(games["y"])
        w.append(np.full(len(games["y"]), weight))
        keys += list(games["prompts"])
    test = np.array([[0.0, *([difficulty[k]] if difficulty is not None else []), 1.0] for k in model["prompts"]])
    return np.array(X), np.concatenate(y), np.concatenate(w), keys, test


def lc_variant(gamed: bool, difficulty: bool, alpaca_exact: bool) -> str:
    """The name of the GLM in use: AlpacaEval's name for its terms, and how ours differs."""
    name = {(True, True): "length_controlled_v1", (False, True): "length_controlled_noreg",
            (True, False): "length_controlled_v1 without instruction difficulty",
            (False, False): "length_controlled_minimal"}[(gamed, difficulty)]
    if alpaca_exact:
        return f"AlpacaEval {name}"
    return f"AlpacaEval {name}, model term unpenalised" + (", one length scale for all rows" if gamed else "")


def lc_win_rate(y, len_model, len_base, *, prompts=None, gamed: Sequence[dict] = (), difficulty: dict | None = None,
                n_boot: int = 0, seed: int = 0, alpaca_exact: bool = False, Cs=LC_CS, n_splits: int = LC_FOLDS) -> dict:
    """Length-controlled win rate of a model over the baseline (the notes above).

    y: the model's outcome per game (p(model's reply ≻ baseline's)); len_model, len_base: lengths;
    prompts: each game's prompt key (needed to join gamed rows and difficulty; default 0..n−1).
    gamed: the baseline against its own gamed replies, one dict per variant with `y` (p(gamed reply ≻
    baseline's)), `delta` (gamed length − baseline length), `prompts`; empty: no regulariser.
    difficulty: {prompt key: d_x} (`instruction_difficulty`), or None for no difficulty term.
    n_boot > 0 adds 95 % percentile CIs from redrawing prompts (`lc_ci95`, `raw_ci95`).
    alpaca_exact: AlpacaEval's fit as they run it, instead of `rlaif rank`'s variant (notes above)."""
    delta = np.asarray(len_model, dtype=float) - np.asarray(len_base, dtype=float)
    model = _as_games(y, delta, prompts)
    gamed = [_as_games(g["y"], g["delta"], g.get("prompts")) for g in gamed]
    X, yy, w, keys, test = _lc_design(model, gamed, difficulty, own_scales=alpaca_exact)
    penalty = np.ones(X.shape[1])
    penalty[-1] = 1.0 if alpaca_exact else 0.0  # θ
    beta, C = fit_l1_logistic_cv(X, yy, w, Cs, n_splits, penalty)
    pred = 1.0 / (1.0 + np.exp(-(test @ beta)))
    out = {"lc": float(pred.mean()), "raw": float(model["y"].mean()), "theta": float(beta[-1]),
           "length_coef": float(beta[0]), "difficulty_coef": float(beta[1]) if difficulty is not None else None,
           "C": C, "games": len(model["y"]), "gamed_games": int(sum(len(g["y"]) for g in gamed)),
           "mean_length_diff": float(delta.mean()), "length_scale": length_scale(delta),
           "variant": lc_variant(bool(gamed), difficulty is not None, alpaca_exact)}
    if n_boot:
        # redraw the model's prompts; every row of a drawn prompt (its gamed rows too) counts as often
        labels = sorted(set(model["prompts"]), key=str)
        index = {k: n for n, k in enumerate(labels)}
        counts = np.random.default_rng(seed).multinomial(len(labels), np.full(len(labels), 1 / len(labels)), n_boot)
        row_prompt = np.array([index.get(k, -1) for k in keys])
        draw_w = np.where(row_prompt >= 0, counts[:, np.maximum(row_prompt, 0)], 0.0) * w
        betas = fit_l1_logistic(X, yy, draw_w, np.full(n_boot, C), penalty)
        model_prompt = np.array([index[k] for k in model["prompts"]])
        per_row = 1.0 / (1.0 + np.exp(-(betas @ test.T)))  # (B, n games of the model)
        wt = counts[:, model_prompt].astype(float)
        lc_draws = (wt * per_row).sum(1) / wt.sum(1)
        raw_draws = (wt * model["y"]).sum(1) / wt.sum(1)
        out["lc_ci95"] = [float(v) for v in np.percentile(lc_draws, [2.5, 97.5])]
        out["raw_ci95"] = [float(v) for v in np.percentile(raw_draws, [2.5, 97.5])]
        out["bootstrap"] = {"draws": n_boot, "seed": seed, "unit": "prompt"}
    return out


def _alpaca_p(record: dict, where: str) -> float | None:
    """AlpacaEval's preference (1: output_1 wins, 2: output_2 wins, 0 or 1.5: a draw, values between
    allowed) as p(output_2 ≻ output_1); None where it is missing."""
    v = record.get("preference")
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if not isinstance(v, (int, float)) or not (v == 0 or 1 <= v <= 2):
        raise ValueError(f"{where}: preference {v!r}; expected a number in [1, 2] (or 0 for a draw)")
    return 0.5 if v == 0 else float(v) - 1.0


def alpaca_eval_lc(annotations: Sequence[dict], gamed: Sequence[dict] = (), difficulty=None, *,
                   n_boot: int = 0, seed: int = 0, alpaca_exact: bool = True) -> dict:
    """The LC win rate of an AlpacaEval run from its annotation records.

    annotations: AlpacaEval annotations of one model against the baseline, each with `instruction`,
    `output_1` (the baseline's reply), `output_2` (the model's) and `preference` (1 = output_1, 2 =
    output_2, 0 or 1.5 = draw, soft values between 1 and 2; records without one are left out of
    the fit). gamed (optional): the same records for the baseline against its own verbose and concise
    replies (output_2 the gamed reply), with `generator_2` naming the variant; each variant is given
    weight 0.1. difficulty (optional): {instruction: d_x}, or a sequence aligned with `annotations`
    (e.g. AlpacaEval's instruction_difficulty.csv). Length is counted in characters, as they do.
    With both, this is their `length_controlled_v1` (`alpaca_exact`, the default: their fit to its
    tolerance; False: the variant `rlaif rank` reports); `variant` says which was used."""
    by_instruction = {}
    if difficulty is not None and not isinstance(difficulty, dict):
        difficulty = {a["instruction"]: float(d) for a, d in zip(annotations, difficulty, strict=True)}

    def games(records, what):
        y, delta, keys = [], [], []
        for n, r in enumerate(records):
            where = f"{what} record {n}"
            for field in ("instruction", "output_1", "output_2"):
                if not isinstance(r.get(field), str):
                    raise ValueError(f"{where}: field {field!r} missing or not text")
            p = _alpaca_p(r, where)
            if p is not None:
                y.append(p)
                delta.append(len(r["output_2"]) - len(r["output_1"]))
                keys.append(r["instruction"])
        return y, delta, keys

    y, delta, keys = games(annotations, "annotation")
    if not y:
        raise ValueError("annotations: no record has a preference")
    variants: dict[str, list] = {}
    for r in gamed:
        variants.setdefault(str(r.get("generator_2", "gamed")), []).append(r)
    gamed_games = []
    for name, records in variants.items():
        gy, gd, gk = games(records, f"gamed ({name})")
        gamed_games.append({"y": gy, "delta": gd, "prompts": gk})
    if difficulty is not None:
        missing = sorted({k for g in [{"prompts": keys}, *gamed_games] for k in g["prompts"]} - set(difficulty))
        if missing:
            raise ValueError(f"difficulty: no value for instruction {missing[0][:60]!r}")
        by_instruction = difficulty
    out = lc_win_rate(y, np.array(delta, dtype=float), np.zeros(len(delta)), prompts=keys, gamed=gamed_games,
                      difficulty=by_instruction if difficulty is not None else None, n_boot=n_boot, seed=seed,
                      alpaca_exact=alpaca_exact)
    out["length_unit"] = "characters"
    return out
