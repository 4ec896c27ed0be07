"""`rlaif run --launcher accelerate`: the pipeline stays one process holding OUT's lock while each
training stage runs under `accelerate launch` (here the shipped cpu_ddp config, two gloo processes)."""

import json

import pytest

from rlaif.cli import main
from pipeline_fixtures import tiny_args

pytestmark = pytest.mark.slow


def test_training_stage_runs_under_accelerate_launch(model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["run", "rlaif_distilled", "--out", str(out), *tiny_args("rlaif_distilled", model_dir),
            "--set", "stages.ppo=null", "--set", "stages.evaluate=null", "--set", "judge_check.enabled=false",
            "--launcher", "accelerate", "--config_file", "cpu_ddp", "--num_processes", "2"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "launch: " in printed and "-m rlaif.train.reward_model" in printed
    summary = json.loads((out / "reward_model" / "summary.json").read_text())
    assert summary["processes"] == 2  # trained by two launched processes, not by the pipeline's
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(out / "reward_model")
    assert main(args) == 0  # resumed: the stage is done, nothing is launched again
    assert "launch: " not in capsys.readouterr().out


@pytest.mark.parametrize("flags, message", [
    (["--launcher", "accelerate", "--config_file", "nowhere/fsdp9.yaml"], "no such accelerate config file"),
    (["--config_file", "fsdp2"], "apply with --launcher accelerate"),
])
def test_bad_launcher_flags_are_one_line(flags, message, tmp_path, capsys):
    assert main(["run", "rlaif_distilled", "--out", str(tmp_path / "x"), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()  # refused before the output folder was touched
