"""Ranking checkpoints: Bradley–Terry ratings with bootstrap CIs, win rates (rlaif/eval/ranking.py; the
length-controlled win rate has its own tests/eval/test_lc_win_rate.py), and `rlaif rank` end to end on tiny random-weight models with the
rule judge (tests/support/rule_judge.py) and with a tiny model as the judge; bad input exits 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from rlaif.eval.ranking import ELO_SCALE, fit_bradley_terry, rank_players, win_rate_matrix

from testkit import build_tiny_llama, run_cli  # noqa: E402
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
    # 12 round-robin pairs, and the baseline (a model) against its verbose and concise replies on 4 prompts
    assert info["setup"]["pairs_judged"] == 4 * n * (n - 1) // 2 and info["setup"]["gamed_pairs_judged"] == 8
    assert judge.counters["option_requests"] == 2 * 20
    assert len(list((tmp_path / "out" / "responses").glob("*-lc-verbose.jsonl"))) == 1
    assert info["lc"]["gamed_baseline"] == {"verbose": 4, "concise": 4}
    assert info["lc"]["difficulty"].startswith("fitted jointly over the 2 checkpoints")
    for row in [r for r in info["players"] if r["name"] != info["baseline"]]:
        assert row["lc_variant"] == info["lc"]["variant"] and "length_controlled_v1" in row["lc_variant"]
        lo, hi = row["lc_vs_baseline_ci95"]
        assert lo <= row["lc_vs_baseline"] <= hi and row["lc_fit"]["gamed_games"] == 8
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
    assert judge.counters["option_requests"] == 2 * 20 and again["players"] == info["players"]
    # hard outcomes (the verdicts) from the same judgements: short beats wordy outright, so the spread grows
    hard = rank(ckpts, prompts, Judge(judge, load_constitution("concise")), tmp_path / "out", max_tokens=12, n_boot=200,
                batch_size=8, source=str(prompt_file), outcomes="hard", judge_check=False)
    assert judge.counters["option_requests"] == 2 * 20 and hard["win_rate_matrix"]["mean_p"][1][2] == 1.0
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
    assert len(list((out / "responses").glob("*.jsonl"))) == 4  # two checkpoints, the baseline's two gamed sets
    assert info["setup"]["gamed_pairs_judged"] == 6 and "length_controlled_v1" in info["lc"]["variant"]
    assert info["lc"]["difficulty"].startswith("left out")  # one checkpoint against the baseline
    assert "gamed-baseline judgements" in (out / "ranking.md").read_text()
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
