"""Records a trainer leaves out are announced: one console line per file with how many, why and the
line of the first (issue 33: `train-rm` on a file whose line 4 held transcripts that differ before
the last assistant turn printed only its summary)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from train_fixtures import toy_prefs, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")


def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _diverging() -> dict:
    u, a = _msg("user", "hello"), _msg("assistant", "hi there")
    return {"chosen": [u, a, _msg("user", "a joke?"), _msg("assistant", "owls are wise")],
            "rejected": [u, a, _msg("user", "go away"), _msg("assistant", "fine.")]}


def _left_out_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "left out" in line]


def test_train_rm_says_which_records_it_left_out(tiny_dir, tmp_path, capsys):
    """The issue's case through the CLI: line 4 of 4 is left out, and the console says so once."""
    from rlaif.cli import main

    prefs = write_jsonl(tmp_path / "prefs.jsonl", toy_prefs(3) + [_diverging()])
    assert main(["train-rm", "--prefs", str(prefs), "--base", str(tiny_dir), "--out", str(tmp_path / "rm"),
                 "--steps", "1", "--batch-size", "3", "--set", "progress=false", "--set", "save=false"]) == 0
    lines = _left_out_lines(capsys.readouterr().err)
    assert lines == [f"train-rm: left out 1 of 4 records of {prefs} (1 differ_before_last_assistant_turn), "
                     "the first at line 4"]


def test_nothing_left_out_prints_nothing(tiny_dir, tmp_path, capsys):
    from rlaif.train.reward_model import RewardConfig, train_reward_model

    prefs = write_jsonl(tmp_path / "prefs.jsonl", toy_prefs(4))
    train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(prefs), output_dir=str(tmp_path / "rm"),
                                    batch_size=4, max_steps=1, progress=False, save=False))
    assert _left_out_lines(capsys.readouterr().err) == []


@pytest.mark.parametrize("trainer", ["dpo", "sft", "kto", "train-rm-eval"])
def test_every_trainer_announces_its_left_out_records(trainer, tiny_dir, tmp_path, capsys):
    """DPO, SFT, KTO (train and eval files) and the reward model's eval file: one line each, naming
    the count, the reason and the first line left out."""
    good = toy_prefs(4)
    if trainer == "dpo":
        from rlaif.train.dpo import DPOConfig, train_dpo

        data = write_jsonl(tmp_path / "d.jsonl", good[:2] + [_diverging()] + good[2:] + [_diverging()])
        evals = write_jsonl(tmp_path / "e.jsonl", [_diverging()] + good)
        train_dpo(DPOConfig(policy=str(tiny_dir), prefs=str(data), eval_file=str(evals), output_dir=str(tmp_path / "o"),
                            batch_size=2, max_steps=1, eval_batch_size=2, progress=False, save=False))
        want = [("dpo", data, 2, 6, "differ_before_last_assistant_turn", 3),
                ("dpo (eval)", evals, 1, 5, "differ_before_last_assistant_turn", 1)]
    elif trainer == "sft":
        from rlaif.train.sft import SFTConfig, train_sft

        ok = [{"prompt": [_msg("user", f"say {w}")], "completion": [_msg("assistant", w)]} for w in ("hi", "yo", "ok")]
        bad = {"prompt": [_msg("user", "hi")], "completion": [_msg("assistant", "hi"), _msg("user", "bye")]}
        data = write_jsonl(tmp_path / "d.jsonl", ok[:1] + [bad] + ok[1:])
        train_sft(SFTConfig(policy=str(tiny_dir), data=str(data), output_dir=str(tmp_path / "o"), batch_size=2,
                            max_steps=1, progress=False, save=False))
        want = [("sft", data, 1, 4, "non_assistant_turn_in_completion", 2)]
    elif trainer == "kto":
        from rlaif.train.kto import KTOConfig, train_kto

        data = write_jsonl(tmp_path / "d.jsonl", good + [dict(good[0], p_chosen=0.5)])
        train_kto(KTOConfig(policy=str(tiny_dir), data=str(data), output_dir=str(tmp_path / "o"), batch_size=4,
                            max_steps=1, progress=False, save=False))
        want = [("kto", data, 1, 5, "within_pair_margin", 5)]
    else:
        from rlaif.train.reward_model import RewardConfig, train_reward_model

        data = write_jsonl(tmp_path / "d.jsonl", good)
        evals = write_jsonl(tmp_path / "e.jsonl", good[:1] + [_diverging(), _diverging()] + good[1:])
        train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(data), eval_file=str(evals),
                                        output_dir=str(tmp_path / "o"), batch_size=4, eval_batch_size=2, max_steps=1,
                                        progress=False, save=False))
        want = [("train-rm (eval)", evals, 2, 6, "differ_before_last_assistant_turn", 2)]
    lines = _left_out_lines(capsys.readouterr().err)
    assert lines == [f"{stage}: left out {n} of {read} records of {path} ({n} {reason}), the first at line {first}"
                     for stage, path, n, read, reason, first in want], lines
