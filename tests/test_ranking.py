"""Ranking checkpoints: Bradley–Terry ratings with bootstrap CIs, win rates, the length-controlled
win rate (rlaif/eval/ranking.py), and `rlaif rank` end to end on tiny random-weight models with the
rule judge (tests/rule_judge.py) and with a tiny model as the judge; bad input exits 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rlaif.eval.ranking import (ELO_SCALE, fit_bradley_terry, lc_win_rate, lc_win_rate_ci, rank_players,
                                win_rate_matrix)

sys.path.insert(0, str(Path(__file__).parent))
from conftest import build_tiny_llama, run_cli  # noqa: E402
from rule_judge import RuleJudge  # noqa: E402

TRUE_ELO = np.linspace(600, 1400, 10)  # mean 1000, 89 Elo points apart


def simulate(seed: int, n_games: int = 2000, elo=TRUE_ELO):
    """Random pairings of distinct players; hard outcomes drawn from the BT probabilities."""
    rng = np.random.default_rng(seed)
    theta = (np.asarray(elo) - 1000) / ELO_SCALE
    n = len(theta)
    i = rng.integers(0, n, n_games)
    j = (i + rng.integers(1, n, n_games)) % n
    p = 1 / (1 + np.exp(-(theta[i] - theta[j])))
    return i, j, (rng.random(n_games) < p).astype(float), p


# ------------------------------------------------------------------ Bradley–Terry


def test_bt_recovers_known_ratings_within_their_cis():
    i, j, y, _ = simulate(seed=0)
    r = rank_players(i, j, y, [f"p{k}" for k in range(10)], n_boot=1000, seed=1)
    by = {p["name"]: p for p in r["players"]}
    errors, widths = [], []
    for k, true in enumerate(TRUE_ELO):
        p = by[f"p{k}"]
        assert p["ci95"][0] <= true <= p["ci95"][1], (k, true, p)
        errors.append(abs(p["elo"] - true))
        widths.append(p["ci95"][1] - p["ci95"][0])
        # the bootstrap agrees with the observed-information standard error
        assert 0.8 < p["bootstrap_se"] / p["asymptotic_se"] < 1.25, p
    assert max(errors) < 60 and np.mean(errors) < 30, errors
    assert 40 < min(widths) and max(widths) < 150, widths  # ~400 games each: tight, not degenerate
    assert [p["name"] for p in r["players"]] == [f"p{k}" for k in range(9, -1, -1)]  # best first
    assert abs(np.mean([p["elo"] for p in r["players"]]) - 1000) < 1e-6  # sum to zero


def test_bt_cis_cover_the_truth_about_95_percent_of_the_time():
    covered = []
    for seed in range(20):
        i, j, y, _ = simulate(seed=100 + seed)
        r = rank_players(i, j, y, list(range(10)), n_boot=300, seed=seed)
        covered += [p["ci95"][0] <= TRUE_ELO[p["name"]] <= p["ci95"][1] for p in r["players"]]
    assert 0.88 <= np.mean(covered) <= 0.99, np.mean(covered)


def test_bt_soft_outcomes_at_the_true_probabilities_give_the_truth():
    i, j, _, p = simulate(seed=3)
    theta = fit_bradley_terry(i, j, p, n=10)  # y = the expected outcome: the score equations hold at the truth
    np.testing.assert_allclose(1000 + ELO_SCALE * theta, TRUE_ELO, atol=0.5)


def test_bt_reference_anchor_and_a_player_that_always_wins():
    i, j, y, _ = simulate(seed=4, n_games=600, elo=[1000, 1100, 900])
    ref = rank_players(i, j, y, ["a", "b", "c"], n_boot=200, seed=0, reference=2)
    mean = rank_players(i, j, y, ["a", "b", "c"], n_boot=200, seed=0)
    e_ref = {p["name"]: p["elo"] for p in ref["players"]}
    e_mean = {p["name"]: p["elo"] for p in mean["players"]}
    assert e_ref["c"] == pytest.approx(1000) and ref["players"][-1]["ci95"] == [pytest.approx(1000)] * 2
    assert e_ref["a"] - e_ref["b"] == pytest.approx(e_mean["a"] - e_mean["b"])
    # separation: "w" wins all its games; the weak ridge keeps the fit finite and "w" on top
    w = rank_players([0, 0, 1, 1, 2], [1, 2, 2, 0, 0], [1, 1, 0.5, 0, 0], ["w", "x", "z"], n_boot=50)
    assert w["players"][0]["name"] == "w" and np.isfinite(w["players"][0]["elo"])


def test_win_rate_matrix_counts_ties_as_half_and_reads_both_orientations():
    m = win_rate_matrix([0, 0, 1, 2], [1, 1, 0, 0], [0.9, 0.5, 0.8, 0.3], n=3)
    # a=0 vs b=1: outcomes for 0 are 0.9, 0.5 and 1 − 0.8 = 0.2
    assert m["win_rate"][0][1] == pytest.approx((1 + 0.5 + 0) / 3)
    assert m["mean_p"][0][1] == pytest.approx((0.9 + 0.5 + 0.2) / 3)
    assert m["win_rate"][1][0] == pytest.approx(1 - (1 + 0.5 + 0) / 3)
    assert m["win_rate"][0][2] == 1.0 and m["games"][1][2] == 0 and m["win_rate"][1][2] is None


# ------------------------------------------------------------------ length-controlled win rate


def test_lc_win_rate_equals_the_raw_win_rate_when_lengths_are_equal():
    rng = np.random.default_rng(0)
    y = rng.random(300)
    fit = lc_win_rate(y, np.full(300, 50), np.full(300, 50))
    assert fit["lc"] == pytest.approx(fit["raw"], abs=1e-9) and fit["raw"] == pytest.approx(y.mean())
    hard = (y > 0.3).astype(float)
    assert lc_win_rate(hard, np.full(300, 7), np.full(300, 7))["lc"] == pytest.approx(hard.mean(), abs=1e-9)
    # a side that wins every game: the MLE runs off to α = ∞; the fit stays defined and says 1
    sweep = lc_win_rate_ci(np.ones(20), rng.integers(5, 50, 20), rng.integers(5, 50, 20), n_boot=50)
    assert sweep["lc"] == pytest.approx(1.0) and sweep["lc_ci95"][0] == pytest.approx(1.0)


def _length_judge(seed, n=3000, quality=0.0, length_coef=2.0, linear=False):
    """Two players; a's replies are longer on average. The judge's logit is a quality gap plus a pure
    length term: tanh(Δ/std Δ) (the model's own form), or, with `linear`, a straight line in Δ."""
    rng = np.random.default_rng(seed)
    len_a, len_b = rng.normal(220, 60, n).clip(5), rng.normal(140, 60, n).clip(5)
    d = len_a - len_b
    term = d / d.std() if linear else np.tanh(d / d.std())
    p = 1 / (1 + np.exp(-(quality + length_coef * term)))
    return (rng.random(n) < p).astype(float), len_a, len_b, np.arange(n)


def test_lc_removes_a_pure_length_effect():
    lcs, covered = [], 0
    for seed in range(5):
        y, la, lb, groups = _length_judge(seed=seed, length_coef=3.0)
        fit = lc_win_rate_ci(y, la, lb, n_boot=300, seed=seed, groups=groups)
        assert fit["raw"] > 0.72 and fit["raw_ci95"][0] > 0.69  # the judge rewards length alone...
        assert abs(fit["lc"] - 0.5) < 0.05, fit  # ...and at equal length there is no gap
        assert fit["length_coef"] == pytest.approx(3.0, abs=0.5)
        lcs.append(fit["lc"])
        covered += fit["lc_ci95"][0] < 0.5 < fit["lc_ci95"][1]
    assert abs(np.mean(lcs) - 0.5) < 0.02 and covered >= 4, (lcs, covered)
    # a length effect of another shape (linear in Δ) is removed too, if less exactly
    y, la, lb, _ = _length_judge(seed=2, length_coef=1.0, linear=True)
    fit = lc_win_rate(y, la, lb)
    assert fit["raw"] > 0.68 and abs(fit["lc"] - 0.5) < 0.06


def test_lc_keeps_a_real_quality_gap():
    y, la, lb, _ = _length_judge(seed=3, quality=-0.8)  # a is worse but longer
    fit = lc_win_rate(y, la, lb)
    assert fit["lc"] == pytest.approx(1 / (1 + np.exp(0.8)), abs=0.04)  # σ(−0.8) = 0.31
    assert fit["raw"] > fit["lc"] + 0.2


def test_lc_is_stable_when_one_side_is_always_longer():
    """64 prompts; a judge that ignores length and prefers a with probability 0.6; a is longer by
    N(60, 30) words. The near-unpenalised fit extrapolated to Δ = 0 from data that sit around
    tanh(2): LC sd 0.23 against the raw rate's 0.064, off by > 0.2 in 42 % of runs."""
    lc, raw = [], []
    for seed in range(400):
        rng = np.random.default_rng(seed)
        len_b = rng.normal(150, 40, 64).clip(5)
        len_a = len_b + rng.normal(60, 30, 64)
        y = (rng.random(64) < 0.6).astype(float)
        fit = lc_win_rate(y, len_a, len_b)
        lc.append(fit["lc"])
        raw.append(fit["raw"])
    lc, raw = np.array(lc), np.array(raw)
    assert lc.std() <= 1.5 * raw.std(), (lc.std(), raw.std())
    assert abs(lc.mean() - 0.6) < 0.02 and np.mean(np.abs(lc - 0.6) > 0.2) < 0.05
    widths, covered = [], 0
    for seed in range(40):
        rng = np.random.default_rng(1000 + seed)
        len_b = rng.normal(150, 40, 64).clip(5)
        len_a = len_b + rng.normal(60, 30, 64)
        y = (rng.random(64) < 0.6).astype(float)
        fit = lc_win_rate_ci(y, len_a, len_b, n_boot=200, seed=seed)
        widths.append(fit["lc_ci95"][1] - fit["lc_ci95"][0])
        covered += fit["lc_ci95"][0] < 0.6 < fit["lc_ci95"][1]
    assert np.mean(widths) < 0.4 and covered >= 34, (np.mean(widths), covered)  # was 0.74 wide


# ------------------------------------------------------------------ rlaif rank


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory, tokenizer):
    dirs = []
    for seed in (0, 1):
        path = tmp_path_factory.mktemp(f"tiny-rank-{seed}")
        model = build_tiny_llama(tokenizer, seed=seed)
        model.config.max_position_embeddings = 4096  # the judge check's prompts quote whole check pairs
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs.append(path)
    return dirs


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "held_out.jsonl"
    path.write_text("".join(json.dumps({"prompt": q}) + "\n" for q in
                            ("How do I boil an egg?", "Name a prime number.", "What is rain?", "Say hello.")))
    return path


def _responses_file(path: Path, prompt_file: Path, reply: str) -> Path:
    rows = [{"prompt": json.loads(line)["prompt"], "response": reply} for line in prompt_file.read_text().splitlines()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_rank_with_the_rule_judge_orders_checkpoints_by_what_it_rewards(tiny_pair, prompt_file, tmp_path):
    from rlaif.config import EngineConfig
    from rlaif.constitution import load_constitution
    from rlaif.judge import Judge
    from rlaif.eval.rank_cmd import rank, resolve_checkpoints
    from rlaif.prompts_io import read_prompts

    short = _responses_file(tmp_path / "short.jsonl", prompt_file, "Yes.")
    wordy = _responses_file(tmp_path / "wordy.jsonl", prompt_file, " ".join(["word"] * 60))
    prompts = read_prompts(prompt_file)
    specs = [str(tiny_pair[0]), str(short), str(wordy)]
    ckpts = resolve_checkpoints(specs, prompts, EngineConfig(device="cpu", batch_size=4), str(prompt_file))
    judge = RuleJudge("shorter", accuracy=0.9)
    info = rank(ckpts, prompts, Judge(judge, load_constitution("concise")), tmp_path / "out", max_tokens=12, n_boot=200,
                batch_size=8, source=str(prompt_file), judge_check=False)
    order = [p["name"] for p in info["players"]]
    assert order[0] == str(short) and order[-1] == str(wordy), order  # 1 word < 12 tokens < 60 words
    n = 3
    assert info["setup"]["pairs_judged"] == 4 * n * (n - 1) // 2 and judge.counters["option_requests"] == 2 * 12
    wr = info["win_rate_matrix"]["win_rate"]
    assert wr[1][2] == 1.0 and wr[2][1] == 0.0  # short beats wordy on every prompt
    assert info["win_rate_matrix"]["mean_p"][1][2] == pytest.approx(0.9)  # debiased p of the rule judge
    top = info["players"][0]
    assert top["ci95"][0] <= top["elo"] <= top["ci95"][1] and top["win_rate_vs_field"] == 1.0
    for name in ("ranking.json", "ranking.md", "ranking.html", "ratings.png", "win_rate.png", "judgments.jsonl"):
        assert (tmp_path / "out" / name).stat().st_size > 0, name
    # a second run resumes: nothing is judged again, the same ranking comes out
    again = rank(ckpts, prompts, Judge(judge, load_constitution("concise")), tmp_path / "out", max_tokens=12, n_boot=200,
                 batch_size=8, source=str(prompt_file), judge_check=False)
    assert judge.counters["option_requests"] == 2 * 12 and again["players"] == info["players"]
    # hard outcomes (the verdicts) from the same judgements: short beats wordy outright, so the spread grows
    hard = rank(ckpts, prompts, Judge(judge, load_constitution("concise")), tmp_path / "out", max_tokens=12, n_boot=200,
                batch_size=8, source=str(prompt_file), outcomes="hard", judge_check=False)
    assert judge.counters["option_requests"] == 2 * 12 and hard["win_rate_matrix"]["mean_p"][1][2] == 1.0
    spread = {k: r["players"][0]["elo"] - r["players"][-1]["elo"] for k, r in (("soft", info), ("hard", hard))}
    assert spread["hard"] > spread["soft"] + 100, spread


def test_rank_cli_end_to_end_with_tiny_models(tiny_pair, prompt_file, tmp_path):
    out = tmp_path / "rank"
    r = run_cli("rank", tiny_pair[0], tiny_pair[1], "--prompts", prompt_file, "--judge", tiny_pair[0],
                "--out", out, "--n-prompts", 3, "--max-tokens", 8, "--bootstrap", 100, "--device", "cpu",
                "--constitution", "concise", timeout=300)
    assert r.returncode == 0, r.stderr
    info = json.loads((out / "ranking.json").read_text())
    assert [p["games"] for p in info["players"]] == [3, 3] and info["setup"]["n_prompts"] == 3
    assert info["baseline"] == str(tiny_pair[0]) and sorted(p["rank"] for p in info["players"]) == [1, 2]
    # two players: the ratings are symmetric about 1000, and the LC matrix is complementary
    elo = [p["elo"] for p in info["players"]]
    assert elo[0] + elo[1] == pytest.approx(2000) and elo[0] >= elo[1]
    lc = info["lc_win_rate_matrix"]
    assert lc[0][1] + lc[1][0] == pytest.approx(1.0)
    html = (out / "ranking.html").read_text()
    assert html.count("<img src=\"data:image/png;base64,") == 2 and "Elo" in html
    assert "| rank | checkpoint | Elo |" in (out / "ranking.md").read_text()
    assert len(list((out / "responses").glob("*.jsonl"))) == 2
    assert "Elo" in r.stdout and "ranking.json" in r.stdout
    # the judge was checked first: a random-weight judge fails the check, and the page says so at the top
    check = info["setup"]["judge_check"]
    assert check["status"] in ("at_chance", "below_chance") and check["pairs"] > 0 and "warning: judge check" in r.stdout
    assert html.index("carry no signal") < html.index("Ratings")


# ------------------------------------------------------------------ bad input


def _rank_main(*args):
    from rlaif.cli import main

    return main(["rank", *map(str, args)])


def test_rank_refuses_fewer_than_two_checkpoints(tiny_pair, prompt_file, tmp_path, capsys):
    assert _rank_main(tiny_pair[0], "--prompts", prompt_file, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoints: got 1; expected at least 2" in err
    assert not (tmp_path / "o").exists()


def test_rank_refuses_a_folder_that_is_not_a_model(tiny_pair, prompt_file, tmp_path, capsys):
    empty = tmp_path / "not_a_model"
    empty.mkdir()
    (empty / "notes.txt").write_text("hello")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_pair[0] / "config.json").read_text())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    classifier = tmp_path / "reward_model"  # a train-rm output: a model, but not one that writes replies
    classifier.mkdir()
    cfg = json.loads((tiny_pair[0] / "config.json").read_text())
    (classifier / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    (classifier / "model.safetensors").write_bytes((tiny_pair[0] / "model.safetensors").read_bytes())
    for bad, expect in ((empty, "checkpoint 2 " + str(empty) + ": folder is not a model (no config.json)"),
                        (no_weights, "no weights"), (broken, "cannot be loaded as a model config"),
                        (classifier, "LlamaForSequenceClassification is not a text generator")):
        assert _rank_main(tiny_pair[0], bad, "--prompts", prompt_file, "--out", tmp_path / "o") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err
    assert not (tmp_path / "o").exists()  # checked before any work


def test_rank_refuses_missing_paths_and_incomplete_response_files(tiny_pair, prompt_file, tmp_path, capsys):
    assert _rank_main(tiny_pair[0], tmp_path / "nowhere", "--prompts", prompt_file, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint 2" in err and "not found" in err, err
    partial = tmp_path / "partial.jsonl"
    partial.write_text(json.dumps({"prompt": "How do I boil an egg?", "response": "Boil it."}) + "\n")
    assert _rank_main(tiny_pair[0], partial, "--prompts", prompt_file, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{prompt_file}:2" in err and "checkpoint 2" in err, err
    assert _rank_main(tiny_pair[0], tiny_pair[0], "--prompts", prompt_file, "--out", tmp_path / "o") == 2
    assert "given twice" in capsys.readouterr().err
    assert _rank_main(tiny_pair[0], "embedded:no-such-model", "--prompts", prompt_file, "--out", tmp_path / "o") == 2
    assert "checkpoint 2 embedded:no-such-model: unknown embedded model" in capsys.readouterr().err
    assert _rank_main(f"transformers:{tmp_path}", tiny_pair[0], "--prompts", prompt_file, "--out", tmp_path / "o") == 2
    assert f"checkpoint 1 {tmp_path}: folder is not a model" in capsys.readouterr().err
    assert _rank_main(tiny_pair[0], tiny_pair[1], "--judge", tmp_path, "--prompts", prompt_file,
                      "--out", tmp_path / "o") == 2
    assert f"--judge {tmp_path}: folder is not a model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
