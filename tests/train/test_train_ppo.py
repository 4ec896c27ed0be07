"""PPO and best-of-N on tiny random-weight models, with a reward that favours vowel tokens."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from train_fixtures import (WORDS, read_log, say_prompts,
                            tiny_tokenizer, toy_prefs, vowel_reward, write_jsonl)

from rlaif.errors import UserError  # noqa: E402
from rlaif.train.best_of_n import BestOfNConfig, baseline_summary, best_of_n, kl_best_of_n, run_best_of_n  # noqa: E402
from rlaif.train.ppo import PPOConfig, make_reward_fn, train_ppo  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return say_prompts(tmp_path_factory.mktemp("prompts"))


@pytest.fixture(scope="module")
def ppo_run(one_thread, tiny_dir, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("ppo")
    cfg = PPOConfig(policy=str(tiny_dir), prompts=str(prompts), output_dir=str(out), batch_size=16,
                    mini_batch_size=8, max_steps=12, learning_rate=1e-2, max_new_tokens=8, kl_coef=0.1,
                    progress=False)
    return cfg, train_ppo(cfg, reward_fn=vowel_reward), out


def test_ppo_raises_the_reward_with_bounded_kl(ppo_run):
    cfg, result, out = ppo_run
    rows = read_log(out)
    assert len(rows) == 12
    first, last = sum(r["reward"] for r in rows[:3]) / 3, sum(r["reward"] for r in rows[-3:]) / 3
    assert last > first + 0.05, (first, last)
    # the KL-regularised optimum satisfies KL ≤ (max R − E_ref R)/β ≤ 1/β for R in [0, 1]
    assert all(0 <= r["kl"] <= 1 / cfg.kl_coef for r in rows[1:])
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)  # first rollout: policy == reference
    for key in ("reward", "kl", "entropy", "clipfrac", "value_loss", "policy_loss", "approx_kl", "non_score_reward"):
        assert key in rows[-1], key
    assert any(r["clipfrac"] > 0 for r in rows)  # the clip is exercised
    assert (out / "reward_vs_kl.png").stat().st_size > 1000
    assert (out / "value_head.safetensors").exists() and (out / "model.safetensors").exists()
    assert result["reward"] == "callable" and result["steps"] == 12


def test_ppo_seeded_runs_repeat(ppo_run, tmp_path):
    cfg, _, out = ppo_run
    train_ppo(cfg.model_copy(update={"output_dir": str(tmp_path), "max_steps": 3, "save": False}),
              reward_fn=vowel_reward)
    keys = ("reward", "kl", "entropy", "clipfrac", "value_loss", "policy_loss")
    again, before = read_log(tmp_path), read_log(out)[:3]
    # step 3 of a 3-step run and of a 12-step run saw the same data, seeds and weights
    assert [[r[k] for k in keys] for r in again] == [[r[k] for k in keys] for r in before]


def test_ppo_with_a_reward_model_dir(tiny_dir, prompts, tmp_path):
    from rlaif.train.reward_model import RewardConfig, train_reward_model

    prefs = write_jsonl(tmp_path / "p.jsonl", toy_prefs(8))
    train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(prefs), output_dir=str(tmp_path / "rm"),
                                    batch_size=8, max_steps=2, learning_rate=1e-3, progress=False))
    from rlaif.cli import main

    assert main(["ppo", "--prompts", str(prompts), "--policy", str(tiny_dir), "--reward", f"rm:{tmp_path / 'rm'}",
                 "--out", str(tmp_path / "ppo"), "--batch-size", "8", "--mini-batch-size", "4", "--steps", "2",
                 "--max-new-tokens", "6", "--set", "progress=false"]) == 0
    result = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert result["steps"] == 2 and result["reward"].startswith("rm:")
    # the logged reward is the reward model's score of what was sampled
    assert all(isinstance(r["reward"], float) for r in read_log(tmp_path / "ppo"))


def test_ppo_rejects_bad_settings(tiny_dir, prompts, tmp_path):
    with pytest.raises(UserError, match="reward 'nope'"):
        make_reward_fn(PPOConfig(reward="nope"))
    with pytest.raises(UserError, match="mini_batch_size 3 must divide batch_size 8"):
        train_ppo(PPOConfig(policy=str(tiny_dir), prompts=str(prompts), output_dir=str(tmp_path),
                            mini_batch_size=3, progress=False), reward_fn=vowel_reward)


# ---------------------------------------------------------------- best-of-N


@pytest.fixture(scope="module")
def engine(tiny_dir):
    from transformers import AutoModelForCausalLM

    from rlaif.backends.transformers_engine import TransformersEngine

    tok = tiny_tokenizer()
    return TransformersEngine.from_pretrained_objects(AutoModelForCausalLM.from_pretrained(tiny_dir), tok)


def test_best_of_n_keeps_the_best_and_beats_one_sample(engine):
    prompts = [{"id": w, "prompt": [{"role": "user", "content": f"say {w}"}]} for w in WORDS]
    cfg = BestOfNConfig(n=6, max_tokens=8, temperature=1.0)
    out = best_of_n(prompts, engine, vowel_reward, cfg)
    assert [r["prompt_id"] for r in out] == WORDS
    for r in out:
        assert len(r["candidates"]) == 6 and r["score"] == max(r["scores"])
        assert r["response"] == r["candidates"][r["scores"].index(r["score"])]
        assert vowel_reward(None, [r["response"]])[0] == pytest.approx(r["score"])
        assert r["chosen"][0]["content"] == r["response"]
    s = baseline_summary(out)
    assert s["mean_best_score"] > s["mean_sample_score"] and s["kl_bound"] == pytest.approx(kl_best_of_n(6))
    assert best_of_n(prompts, engine, vowel_reward, cfg) == out  # seeded: the same samples again


def test_best_of_n_stage_resumes(engine, tmp_path):
    prompts = [{"id": w, "prompt": [{"role": "user", "content": f"say {w}"}]} for w in WORDS]
    cfg = BestOfNConfig(n=3, max_tokens=6, batch_size=4)
    calls = []

    def counting(p, t):
        calls.append(len(t))
        return vowel_reward(p, t)

    first = run_best_of_n(prompts[:4], engine, counting, cfg, tmp_path, progress=False)
    both = run_best_of_n(prompts, engine, counting, cfg, tmp_path, progress=False)
    assert calls == [12, 12]  # the second run only scored the 4 new prompts
    lines = (tmp_path / "best_of_n.jsonl").read_text().splitlines()
    assert len(lines) == 8 and first["prompts"] == 4 and both["prompts"] == 8
    assert json.loads((tmp_path / "best_of_n_summary.json").read_text())["n"] == 3


def test_ppo_with_the_direct_labeler_reward(tiny_dir, prompts, tmp_path):
    """Direct RLAIF: `--reward labeler:direct` scores each rollout with the labeler's 1–10 score (in [0, 1])."""
    pytest.importorskip("rlaif.stages.labeler")
    from train_fixtures import save_tiny

    from rlaif.cli import main

    labeler = save_tiny(tmp_path / "labeler", seed=2, max_positions=4096)  # the judge prompt is long in characters
    assert main(["ppo", "--prompts", str(prompts), "--policy", str(tiny_dir), "--reward", "labeler:direct",
                 "--labeler-model", str(labeler), "--out", str(tmp_path / "ppo"), "--batch-size", "4",
                 "--mini-batch-size", "4", "--steps", "1", "--max-new-tokens", "4", "--set", "progress=false"]) == 0
    rows = read_log(tmp_path / "ppo")
    assert len(rows) == 1 and 0.0 <= rows[0]["reward"] <= 1.0
    assert json.loads((tmp_path / "ppo" / "summary.json").read_text())["reward"] == "labeler:direct"
