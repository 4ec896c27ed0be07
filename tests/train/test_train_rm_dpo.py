"""Reward model and DPO on tiny random-weight models: they learn a toy preference set, seeded
runs repeat exactly, saved models reload and score identically, p = 0.5 leaves DPO unchanged."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from train_fixtures import toy_prefs, write_jsonl

from rlaif.errors import UserError  # noqa: E402
from rlaif.train.dpo import DPOConfig, train_dpo  # noqa: E402
from rlaif.train.models import LoraSettings  # noqa: E402
from rlaif.train.reward_model import RewardConfig, RewardScorer, train_reward_model  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def _strip_time(rows):
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "step_seconds")} for r in rows]


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefs")
    return write_jsonl(d / "train.jsonl", toy_prefs(16)), write_jsonl(d / "heldout.jsonl", toy_prefs(16)[8:])


@pytest.fixture(scope="module")
def rm_run(one_thread, tiny_dir, prefs, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    cfg = RewardConfig(base=str(tiny_dir), prefs=str(prefs[0]), eval_file=str(prefs[1]), human_eval_file=str(prefs[1]),
                       output_dir=str(out), batch_size=8, max_steps=12, max_length=256, learning_rate=3e-3, eval_every=6,
                       progress=False)
    return cfg, train_reward_model(cfg), out


def test_reward_model_learns_the_toy_set(rm_run):
    cfg, result, out = rm_run
    rows = _log(out)
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
    assert rows[-1]["accuracy"] > 0.9 and rows[-1]["eval_accuracy"] > 0.9 and rows[-1]["human_accuracy"] > 0.9
    assert "eval_accuracy" in rows[5] and "eval_accuracy" not in rows[4]  # eval every 6 steps and at the end
    assert result["accuracy_end"] > 0.9 and result["steps"] == 12 and result["peak_rss_mb"] > 0
    for name in ("summary.json", "manifest.json", "train_curves.png", "config.json", "model.safetensors"):
        assert (out / name).exists(), name
    assert json.loads((out / "manifest.json").read_text())["stages"]["train-rm"]["summary"]["steps"] == 12


def test_saved_reward_model_reloads_and_scores_identically(rm_run, prefs):
    from transformers import AutoModelForSequenceClassification

    cfg, _, out = rm_run
    rows = _log(out)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_labels == 1 and model.config.pad_token_id is not None
    scorer = RewardScorer(str(out))
    held = [json.loads(line) for line in prefs[1].read_text().splitlines()]
    r_c = scorer([r["prompt"] for r in held], [r["chosen"][0]["content"] for r in held])
    r_r = scorer([r["prompt"] for r in held], [r["rejected"][0]["content"] for r in held])
    margin = sum(c - r for c, r in zip(r_c, r_r)) / len(held)
    assert margin == pytest.approx(rows[-1]["eval_margin"], abs=1e-5)  # in-training eval == reloaded model
    assert all(c > r for c, r in zip(r_c, r_r))
    # batch composition does not change a score (padding is handled)
    one = [scorer([held[i]["prompt"]], [held[i]["chosen"][0]["content"]])[0] for i in range(3)]
    assert one == pytest.approx(r_c[:3], abs=1e-5)
    # it truncates as training did: the run's max_length, read from the folder's manifest
    assert scorer.max_length == cfg.max_length != 512
    assert RewardScorer(str(out), max_length=64).max_length == 64


def test_scorer_truncates_a_long_reply_as_training_did(rm_run):
    """A reply past the training max_length: the scorer cuts it where training would have, so two
    replies that differ only beyond the cut get one score."""
    cfg, _, out = rm_run
    scorer = RewardScorer(str(out))
    head = "Sure, here is a careful answer. " * 40
    a, b = scorer(["Tell me something."] * 2, [head + "The end.", head + "Something else entirely, at length."])
    assert a == pytest.approx(b, abs=1e-6)


def test_reward_model_seeded_runs_repeat(rm_run, tmp_path):
    cfg, _, out = rm_run
    again = cfg.model_copy(update={"output_dir": str(tmp_path), "save": False, "eval_file": None,
                                   "human_eval_file": None})
    train_reward_model(again)
    train_keys = ("step", "loss", "accuracy", "margin", "lr")
    assert [{k: r[k] for k in train_keys} for r in _log(tmp_path)] == [{k: r[k] for k in train_keys} for r in _log(out)]
    other = cfg.model_copy(update={"output_dir": str(tmp_path / "s1"), "save": False, "seed": 1,
                                   "max_steps": 2, "eval_file": None, "human_eval_file": None})
    train_reward_model(other)
    assert _log(tmp_path / "s1")[0]["loss"] != _log(out)[0]["loss"]


def test_upstream_hh_rlhf_file_is_read_as_chat_pairs(tmp_path):
    import gzip

    from rlaif.train.reward_model import read_eval_pairs

    rows = [{"chosen": "\n\nHuman: hi there\n\nAssistant: hello, how can i help?",
             "rejected": "\n\nHuman: hi there\n\nAssistant: go away"}] * 2
    path = tmp_path / "hh.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    pairs = read_eval_pairs(str(path))
    assert len(pairs) == 2 and pairs[0].prompt == [{"role": "user", "content": "hi there"}]
    assert pairs[0].chosen == [{"role": "assistant", "content": "hello, how can i help?"}] and pairs[0].p == 1.0


def test_bad_preference_file_is_one_clear_error(tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(toy_prefs(1)[0]) + "\n" + json.dumps({"prompt": "x", "chosen": "y"}) + "\n")
    with pytest.raises(UserError, match=r"bad\.jsonl:2: missing field 'rejected'"):
        train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(bad), output_dir=str(tmp_path / "o"),
                                        progress=False))
    assert not (tmp_path / "o" / "model.safetensors").exists()


@pytest.mark.parametrize("loss", ["sigmoid", "ipo"])
def test_dpo_raises_the_chosen_log_ratio_margin(tiny_dir, prefs, tmp_path, loss):
    cfg = DPOConfig(policy=str(tiny_dir), prefs=str(prefs[0]), eval_file=str(prefs[1]), output_dir=str(tmp_path),
                    loss=loss, beta=0.1 if loss == "sigmoid" else 0.5, batch_size=8, max_steps=8,
                    learning_rate=3e-3, eval_every=100, progress=False)
    result = train_dpo(cfg)
    rows = _log(tmp_path)
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-6)  # step 1: policy == reference
    assert rows[0]["accuracy"] == 0.5  # every pair tied: half credit, as in the reward model
    assert rows[-1]["margin"] > 0.05 and rows[-1]["eval_margin"] > 0.05 and rows[-1]["eval_accuracy"] == 1.0
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["rewards_chosen"] > rows[-1]["rewards_rejected"]
    assert result["loss_type"] == loss
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path)  # a plain causal-LM dir


def test_dpo_with_p_half_leaves_the_policy_unchanged(tiny_dir, tmp_path):
    """At h = 0 (policy == reference) both soft losses have zero gradient when p = 0.5, and stay there."""
    from safetensors.torch import load_file

    prefs = write_jsonl(tmp_path / "half.jsonl", toy_prefs(8, p=0.5))
    before = load_file(str(tiny_dir / "model.safetensors"))
    for loss in ("sigmoid", "ipo"):
        train_dpo(DPOConfig(policy=str(tiny_dir), prefs=str(prefs), output_dir=str(tmp_path / loss), loss=loss,
                            batch_size=4, max_steps=3, learning_rate=1e-2, progress=False))
        after = load_file(str(tmp_path / loss / "model.safetensors"))
        assert all(torch.equal(before[k], after[k]) for k in before), loss
    # the same data labelled p = 1 does move the policy
    hard = write_jsonl(tmp_path / "hard.jsonl", toy_prefs(8, p=1.0))
    train_dpo(DPOConfig(policy=str(tiny_dir), prefs=str(hard), output_dir=str(tmp_path / "hard"),
                        batch_size=4, max_steps=1, learning_rate=1e-2, progress=False))
    after = load_file(str(tmp_path / "hard" / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_dpo_with_lora_trains_adapters_and_saves_a_merged_model(tiny_dir, prefs, tmp_path):
    pytest.importorskip("peft")
    cfg = DPOConfig(policy=str(tiny_dir), prefs=str(prefs[0]), output_dir=str(tmp_path), batch_size=8, max_steps=4,
                    learning_rate=1e-2, progress=False, lora=LoraSettings(r=4, alpha=8))
    train_dpo(cfg)
    rows = _log(tmp_path)
    assert rows[-1]["margin"] > rows[0]["margin"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert not any("lora" in n for n, _ in model.named_parameters())


def test_cli_train_rm_dpo_and_best_of_n(tiny_dir, prefs, tmp_path, capsys):
    from rlaif.cli import main

    assert main(["train-rm", "--prefs", str(prefs[0]), "--base", str(tiny_dir), "--out", str(tmp_path / "rm"),
                 "--steps", "2", "--batch-size", "8", "--lr", "1e-3", "--set", "progress=false"]) == 0
    assert "train-rm:" in capsys.readouterr().out
    assert (tmp_path / "rm" / "model.safetensors").exists()
    assert main(["dpo", "--prefs", str(prefs[0]), "--policy", str(tiny_dir), "--out", str(tmp_path / "dpo"),
                 "--loss", "ipo", "--beta", "0.5", "--steps", "2", "--batch-size", "4", "--set", "progress=false"]) == 0
    summary = json.loads((tmp_path / "dpo" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["loss_type"] == "ipo"
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("say hi\nsay yo\n")
    assert main(["best-of-n", "--prompts", str(prompts), "--reward", f"rm:{tmp_path / 'rm'}", "--model",
                 str(tiny_dir), "--out", str(tmp_path / "bon"), "--n", "3", "--max-tokens", "6", "--device", "cpu"]) == 0
    rows = [json.loads(x) for x in (tmp_path / "bon" / "best_of_n.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(r["score"] == max(r["scores"]) for r in rows)
    # a bad value is one line and exit 2, before any training
    assert main(["dpo", "--prefs", str(prefs[0]), "--policy", str(tiny_dir), "--out", str(tmp_path / "x"),
                 "--set", "beta=-1"]) == 2
    assert "field beta" in capsys.readouterr().err


@pytest.mark.parametrize("trainer", ["reward_model", "dpo"])
def test_gradient_checkpointing_gives_the_same_training(trainer, tiny_dir, prefs, tmp_path):
    """Activation checkpointing recomputes the forward in the backward pass: same numbers, less memory."""
    common = dict(prefs=str(prefs[0]), batch_size=4, max_steps=3, learning_rate=3e-3, progress=False, save=False)
    make = ((lambda **kw: RewardConfig(base=str(tiny_dir), **common, **kw), train_reward_model)
            if trainer == "reward_model" else
            (lambda **kw: DPOConfig(policy=str(tiny_dir), beta=0.2, **common, **kw), train_dpo))
    logs = []
    for flag in (False, True):
        out = tmp_path / str(flag)
        make[1](make[0](output_dir=str(out), gradient_checkpointing=flag))
        logs.append(_strip_time(_log(out)))
    plain, ckpt = logs
    assert [r["step"] for r in ckpt] == [1, 2, 3]
    for a, b in zip(plain, ckpt):
        for k in ("loss", "margin"):
            assert b[k] == pytest.approx(a[k], abs=1e-5, rel=1e-4), (a["step"], k)
    assert plain[-1]["loss"] != plain[0]["loss"]  # it trained


def test_ppo_refuses_gradient_checkpointing(tiny_dir, tmp_path):
    from rlaif.train.ppo import PPOConfig, train_ppo

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hi"}])
    with pytest.raises(UserError, match="gradient_checkpointing is not supported"):
        train_ppo(PPOConfig(policy=str(tiny_dir), prompts=str(prompts), reward="rm:/nowhere",
                            output_dir=str(tmp_path / "ppo"), gradient_checkpointing=True, progress=False))


def test_reward_model_first_step_loss_equals_trl_reward_trainer(tiny_dir, tmp_path):
    """Our trainer's logged first-step loss against TRL 1.16 `RewardTrainer.compute_loss` on the same
    weights (same seed, same loader: same head), the same pairs and max_length: equal. The prompts
    are longer than max_length // 2 and every pair fits max_length, the case where a prompt window
    cut by default (ours, no TRL counterpart) gave another loss (0.64716 against TRL's 0.69858 in
    `make bench-quick`)."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    from rlaif.train.encoding import encode
    from rlaif.train.models import load_tokenizer
    from rlaif.train.trainer import seed_everything
    from rlaif.train.reward_model import load_reward_model

    topics = ["the tides", "the moon", "bees", "old maps"]
    rows = [{"prompt": [{"role": "user", "content": f"please tell me, at some length and with care, all you know "
                                                    f"about {t}, and why it matters to people today"}],
             "chosen": [{"role": "assistant", "content": f"gladly: {t} matter."}],
             "rejected": [{"role": "assistant", "content": "no."}]} for t in topics]
    max_length = 160
    tok = load_tokenizer(str(tiny_dir))
    for r in rows:
        ids, completion_mask = encode(tok, r["prompt"], r["chosen"], 1 << 30, 1 << 30)
        assert max_length // 2 < completion_mask.count(0) and len(ids) <= max_length
    prefs = write_jsonl(tmp_path / "prefs.jsonl", rows)
    train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(prefs), output_dir=str(tmp_path / "ours"),
                                    batch_size=4, max_steps=1, max_length=max_length, seed=0, save=False,
                                    progress=False))
    ours = _log(tmp_path / "ours")[0]["loss"]

    seed_everything(0)
    model = load_reward_model(str(tiny_dir), tok)  # the head ours started from: same seed, same loader
    args = TRLRewardConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, report_to=[],
                           use_cpu=True, max_length=max_length, bf16=False, seed=0)
    try:
        trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
        batch = {k: v.cpu() for k, v in next(iter(trainer.get_train_dataloader())).items()}
        assert batch["input_ids"].shape[0] == 8  # every pair kept: none over max_length
        trainer.model.train()
        theirs = trainer.compute_loss(trainer.model, dict(batch)).item()
    finally:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
    assert ours == pytest.approx(theirs, abs=1e-5), (ours, theirs)
    assert abs(theirs - 0.693147) > 1e-3  # the head scores the pairs apart: a loss that can differ
