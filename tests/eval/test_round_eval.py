"""The round evaluation's KL(π_k ‖ π_0) pieces (rlaif/eval/round_eval.py): the samples are the
model's own temperature-1 distribution whatever its generation_config says, and the scorer runs
on the engine block's device."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from train_fixtures import save_tiny

from rlaif.backends import load_engine  # noqa: E402
from rlaif.config import EngineConfig  # noqa: E402
from rlaif.eval.round_eval import SampleScorer, kl_samples, logp_stage  # noqa: E402
from rlaif.errors import EngineError  # noqa: E402
from rlaif.runner import run_stage  # noqa: E402
from rlaif.stages.responses import ResponsesConfig, expand, make_process  # noqa: E402

TOPICS = ["cats", "tea", "maps", "rain", "bees", "jazz"]
HELD_OUT = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"tell me about {t}"}]} for i, t in enumerate(TOPICS)]


def _set_generation_config(model_dir: Path, **options) -> None:
    path = model_dir / "generation_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**{k: v for k, v in config.items() if k not in options}, **options}))


def _draw(model_dir: Path, out: Path, pure: bool) -> list[str]:
    engine = load_engine(EngineConfig(model=str(model_dir), device="cpu", batch_size=8))
    try:
        if pure:
            result = kl_samples(engine, HELD_OUT, out, samples=2, max_tokens=32, seed=0, batch_size=8)
        else:  # the pipeline's ordinary sampling, which keeps the model's own options
            rc = ResponsesConfig(n=2, max_tokens=32, temperature=1.0, top_p=1.0, seed=0)
            result = run_stage("samples", expand(HELD_OUT, engine.model, rc), make_process(engine, rc), out,
                               config=rc, batch_size=8, progress=False)
    finally:
        engine.close()
    return [r["response"] for r in result.records]


def test_kl_samples_ignore_a_generation_config_repetition_penalty(tmp_path, one_thread):
    """The same folder (so the same record ids and seeds) with and without repetition_penalty 1.5
    (and a top_k) in its generation_config: the KL samples are identical, while ordinary sampling
    does change, so the options do reach `generate`."""
    model = save_tiny(tmp_path / "policy", seed=3)
    _set_generation_config(model, repetition_penalty=1.0)
    plain_kl, plain = _draw(model, tmp_path / "kl_a", True), _draw(model, tmp_path / "ord_a", False)
    _set_generation_config(model, repetition_penalty=1.5, top_k=5, min_p=0.2)
    penalised_kl, penalised = _draw(model, tmp_path / "kl_b", True), _draw(model, tmp_path / "ord_b", False)
    assert len(plain_kl) == 2 * len(HELD_OUT)
    assert penalised != plain  # the generation_config options bite on ordinary sampling
    assert penalised_kl == plain_kl


def test_kl_sample_ids_say_pure_and_other_ids_are_unchanged():
    """`pure` enters a record's id (a pure sample is another sample) but not its seed, and only
    when set: the ids and seeds of every other stage stay what they were."""
    from rlaif.records import record_id

    rc = ResponsesConfig(n=1, temperature=1.0)
    before = record_id("responses", HELD_OUT[0]["prompt"], "m", {k: v for k, v in rc.model_dump().items()
                                                                 if k != "pure"}, 0)
    plain, pure = expand(HELD_OUT[:1], "m", rc)[0], expand(HELD_OUT[:1], "m", rc.model_copy(update={"pure": True}))[0]
    assert plain["id"] == before and "pure" not in rc.params()
    assert pure["id"] != plain["id"] and pure["seed"] == plain["seed"]


def test_sample_scorer_runs_on_the_engine_blocks_device(tmp_path, one_thread):
    """The scorer's device is the policy block's: cpu here; a CUDA device on a machine without one
    is the engines' own clear error, raised from logp_stage (the pipeline's call)."""
    model = save_tiny(tmp_path / "policy", seed=3)
    scorer = SampleScorer(str(model), device="cpu")
    assert scorer.device == torch.device("cpu") and next(scorer.model.parameters()).device.type == "cpu"
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the gpu test covers it")
    samples = [{"id": "s", "prompt": HELD_OUT[0]["prompt"], "response": "ok.", "finish_reason": "stop"}]
    with pytest.raises(EngineError, match="cuda"):
        logp_stage(str(model), samples, tmp_path / "eval", "logp_policy", system_prompt=None, batch_size=4,
                   device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sample_scorer_on_cuda_matches_cpu(tmp_path):
    model = save_tiny(tmp_path / "policy", seed=3)
    batch = [{"id": f"{i}", "prompt": h["prompt"], "response": "well, it is nice.", "finish_reason": "stop"}
             for i, h in enumerate(HELD_OUT)]
    gpu = SampleScorer(str(model), device="cuda")
    assert next(gpu.model.parameters()).device.type == "cuda"
    on_gpu = [r["logp"] for r in gpu(batch)]
    on_cpu = [r["logp"] for r in SampleScorer(str(model), device="cpu")(batch)]
    assert on_gpu == pytest.approx(on_cpu, abs=1e-3)
