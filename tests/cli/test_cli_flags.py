"""Trainer flags made from the trainers' configs (issue 35, part 2): every trainer config field is a flag
of its command (help from its description) and a field of its pipeline block; the older spellings in
the README and the tests still build the same configs; bad values are one line naming the field."""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from rlaif.cli import build_parser, main
from rlaif.cli_flags import ModelFlags, add_command

ROOT = Path(__file__).resolve().parents[2]

# command -> (module, config class, train function, fields the command fills itself)
TRAINERS = {
    "train-rm": ("rlaif.train.reward_model", "RewardConfig", "train_reward_model", ()),
    "train-rm-ensemble": ("rlaif.train.reward_model", "RewardConfig", None, ()),
    "dpo": ("rlaif.train.dpo", "DPOConfig", "train_dpo", ()),
    "orpo": ("rlaif.train.orpo", "ORPOConfig", "train_orpo", ()),
    "sft": ("rlaif.train.sft", "SFTConfig", "train_sft", ()),
    "rs-ft": ("rlaif.train.sft", "SFTConfig", None, ("data",)),
    "kto": ("rlaif.train.kto", "KTOConfig", "train_kto", ()),
    "ppo": ("rlaif.train.ppo", "PPOConfig", "train_ppo", ()),
    "grpo": ("rlaif.train.grpo", "GRPOConfig", "train_grpo", ()),
}
STAGES = {"sft": "SFTConfig", "reward_model": "RewardConfig", "dpo": "DPOConfig", "ppo": "PPOConfig",
          "grpo": "GRPOConfig"}


def _config_class(command):
    import importlib

    module, cls, _, _ = TRAINERS[command]
    return getattr(importlib.import_module(module), cls)


def _parser(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    p = sub.choices[command]
    return p.make_flags()


def _sample(info):
    """A value of the field's type, as a flag would spell it."""
    import typing

    ann = info.annotation
    args = [a for a in typing.get_args(ann) if a is not type(None)] or [ann]
    first = args[0]
    if typing.get_origin(first) is typing.Literal:
        return str(typing.get_args(first)[-1])
    return {bool: None, int: "3", float: "0.25", str: "x"}.get(first)


@pytest.mark.parametrize("command", sorted(TRAINERS))
def test_every_config_field_is_a_flag_with_its_description_as_help(command):
    cls = _config_class(command)
    p = _parser(command)
    dests = {a.dest: a for a in p._actions}
    for name, info in cls.model_fields.items():
        if name in TRAINERS[command][3]:
            assert name not in dests  # the command fills it
            continue
        assert name in dests or any(d.startswith(name + ".") for d in dests), f"{command}: no flag for {name}"
        assert info.description, f"{command}: field {name} has no description (its flag would have no help)"
        nested = any(d.startswith(name + ".") for d in dests)  # a model: its sub-fields are the flags
        if name in dests and not nested:
            assert info.description in (dests[name].help or ""), (command, name)


@pytest.mark.parametrize("command", ["dpo", "kto", "ppo", "grpo", "sft", "train-rm"])
def test_every_scalar_field_given_as_a_flag_reaches_the_config(command, monkeypatch, tmp_path):
    import importlib

    module, _, fn, _ = TRAINERS[command]
    seen = {}
    target = "rlaif.train.grpo_loop" if command == "grpo" else module
    monkeypatch.setattr(importlib.import_module(target), fn, lambda cfg, **kw: seen.setdefault("cfg", cfg) and {})
    cls = _config_class(command)
    p = _parser(command)
    for name, info in cls.model_fields.items():
        action = next((a for a in p._actions if a.dest == name), None)
        value = _sample(info)
        if action is None or (value is None and info.annotation is not bool):
            continue
        flag = action.option_strings[0]
        base = ["--out", str(tmp_path / "o"), "--prefs", "p", "--data", "d", "--prompts", "q", "--reward", "rm:x"]
        keep = [a for a in base if a in {o for x in p._actions for o in x.option_strings}]
        argv = [command]
        for i in range(0, len(base), 2):
            if base[i] in keep and base[i] != flag and name not in ("rewards",):
                argv += base[i:i + 2]
        if name in ("output_dir", "rewards", "reward_weights", "max_prompt_length", "max_length", "eval_every",
                    "eval_batch_size"):
            continue  # covered elsewhere, or a sample value the config refuses on its own
        argv += [flag] if value is None else [flag, value]
        seen.clear()
        assert main(argv) == 0, argv
        got = getattr(seen["cfg"], name)
        expect = (not info.default) if value is None else type(got)(value) if not isinstance(got, str) else value
        assert got == expect, (command, name, got, expect)


def _readme_lines():
    text = (ROOT / "README.md").read_text()
    for line in text.splitlines():
        line = line.split("  #")[0].strip()
        m = re.match(r"rlaif (train-rm|dpo|orpo|sft|kto|ppo|grpo)\s", line)
        if m and not line.endswith("\\"):
            yield line


TEST_LINES = [  # command lines the tests and README use, older spellings included
    "dpo --prefs p.jsonl --policy tiny --out o --lr 1e-5 --steps 2 --batch-size 2 --hard-labels --lora-r 4",
    "kto --data d.jsonl --out o --format pairs --threshold 0.7 --pair-margin 0.1 --desirable-weight 2",
    "ppo --prompts q --policy tiny --reward labeler:direct --labeler-model j --out o --kl-coef 0.1 --ppo-epochs 1",
    "grpo --prompts q --out o --reward labeler:direct --reward rule:rlaif.train.rewards:brevity "
    "--reward-weight brevity=0.25 --num-generations 2 --advantage rloo --judge openai:M",
    "orpo --prefs p --out o --sft-on all --beta 0.2 --hard-labels",
    "train-rm --prefs p --out o --margin-from-strength 1.0 --human-eval-file h --eval-file e --eval-every 2",
    "sft --data d --out o --epochs 1 --grad-accum 2 --max-length 64 --seed 3",
]


@pytest.mark.parametrize("line", [*_readme_lines(), *TEST_LINES])
def test_readme_and_test_command_lines_build_their_configs(line, monkeypatch):
    import importlib

    argv = shlex.split(line.removeprefix("rlaif "))
    module, _, fn, _ = TRAINERS[argv[0]]
    seen = {}
    target = "rlaif.train.grpo_loop" if argv[0] == "grpo" else module
    monkeypatch.setattr(importlib.import_module(target), fn, lambda cfg, **kw: seen.setdefault("cfg", cfg) and {})
    assert main(argv) == 0
    cfg = seen["cfg"]
    if "--lr" in argv:
        assert cfg.learning_rate == float(argv[argv.index("--lr") + 1])
    if "--hard-labels" in argv:
        assert cfg.soft_labels is False
    if "--lora-r" in argv:
        assert (cfg.lora.r, cfg.lora.alpha) == (4, 8)  # alpha 2r, as before
    if argv[0] == "grpo" and "--reward-weight" in argv:
        assert [r.kind for r in cfg.rewards][:1] == ["judge_direct"] and cfg.reward_weights == {"brevity": 0.25}
    if "--labeler-model" in argv:
        assert cfg.judge == "j"
    if "--format" in argv:
        assert (cfg.data_format, cfg.score_threshold) == ("pairs", 0.7)


def test_config_file_then_flags_then_set(tmp_path, monkeypatch):
    import rlaif.train.dpo as dpo

    seen = {}
    monkeypatch.setattr(dpo, "train_dpo", lambda cfg: seen.setdefault("cfg", cfg) and {})
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("beta: 0.3\nlearning_rate: 1.0e-4\nlora: {r: 2, dropout: 0.1}\n")
    assert main(["dpo", "--prefs", "p", "--out", "o", "--config", str(cfg_file), "--lr", "2e-4", "--lora.r", "8",
                 "--set", "beta=0.4"]) == 0
    c = seen["cfg"]
    assert (c.beta, c.learning_rate, c.lora.r, c.lora.dropout) == (0.4, 2e-4, 8, 0.1)


@pytest.mark.parametrize("argv, field", [
    (["dpo", "--prefs", "p", "--out", "o", "--beta", "abc"], "beta"),
    (["dpo", "--prefs", "p", "--out", "o", "--steps", "0"], "max_steps"),
    (["kto", "--data", "d", "--out", "o", "--threshold", "2"], "score_threshold"),
    (["grpo", "--prompts", "q", "--out", "o", "--reward-weight", "nope"], "reward_weights"),
])
def test_bad_values_are_one_line_naming_the_field(argv, field, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and field in err[0], err


def test_a_new_config_field_is_a_flag_with_its_help():
    import argparse

    from pydantic import Field

    from rlaif.config import Strict

    class Cfg(Strict):
        warmup_ratio: float = Field(0.0, description="share of the steps spent warming up")

    root = argparse.ArgumentParser(prog="rlaif")
    flags = [ModelFlags(Cfg)]
    add_command(root.add_subparsers(dest="command"), "demo", func=None, flags=flags)
    args = root.parse_args(["demo", "--warmup-ratio", "0.1"])
    assert flags[0].values(args) == {"warmup_ratio": "0.1"}
    help_text = root._subparsers._group_actions[0].choices["demo"].format_help()
    assert "--warmup-ratio" in help_text and "share of the steps spent warming up" in help_text


@pytest.mark.parametrize("stage, cls", sorted(STAGES.items()))
def test_every_trainer_field_is_a_field_of_its_pipeline_block(stage, cls, tmp_path):
    import importlib

    from rlaif.config import load_config
    from rlaif.pipeline_config import PipelineConfig

    module = {"sft": "sft", "reward_model": "reward_model", "dpo": "dpo", "ppo": "ppo", "grpo": "grpo"}[stage]
    config = getattr(importlib.import_module(f"rlaif.train.{module}"), cls)
    for name, info in config.model_fields.items():
        value = info.get_default(call_default_factory=True)
        path = tmp_path / "p.yaml"
        import yaml

        path.write_text(yaml.safe_dump({"name": "t", "stages": {stage: {name: _plain(value)}}}))
        block = getattr(load_config(PipelineConfig, path).stages, stage)
        assert isinstance(block, config) and name in block.model_fields_set, (stage, name)


def _plain(value):
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def test_a_bad_stage_field_names_the_file_and_the_field(tmp_path):
    from rlaif.errors import UserError
    from rlaif.pipeline_config import load_pipeline

    path = tmp_path / "p.yaml"
    path.write_text("name: t\nstages:\n  dpo:\n    beta: -1\n")
    with pytest.raises(UserError, match=r"p.yaml: field stages.dpo.beta: input should be greater than 0"):
        load_pipeline(str(path))


def test_help_and_other_commands_do_not_import_a_trainer():
    code = ("import sys; from rlaif.cli import build_parser; p = build_parser(); "
            "p.parse_args(['models']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "False"
