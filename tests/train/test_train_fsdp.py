"""Sharded training under `accelerate launch --config_file configs/accelerate/fsdp2.yaml`.

On this CPU machine the shipped FSDP2 config runs torch's FSDP2 over gloo (rlaif/train/distributed.py
turns accelerate's FSDP2 path on where accelerate would only do it on GPUs): the same `fully_shard`
wrapping, full-state-dict gathering on every rank, and PPO's one-gather-per-rollout sampling.
ZeRO-3 and NCCL need GPUs: those tests are marked `gpu` and skipped here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import SUPPORT
import torch
import yaml

from train_fixtures import toy_prefs, write_jsonl

from rlaif.train.dpo import DPOConfig, train_dpo  # noqa: E402
from rlaif.train.reward_model import RewardConfig, train_reward_model  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs" / "accelerate"


def launch(config: str, module: str, cfg_file: Path, processes: int = 2, extra: tuple = ()):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
           "--num_processes", str(processes), "--main_process_port", str(29600 + os.getpid() % 300), *extra,
           "-m", f"rlaif.train.{module}", str(cfg_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).state_dict()


@pytest.mark.heavy
def test_fsdp2_dpo_with_lora_matches_one_process(tiny_dir, tmp_path):
    """Two FSDP2 processes train DPO with LoRA, gather the full state dict on both ranks, merge the
    adapters in it and save: the folder loads with from_pretrained and equals the one-process model."""
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [dict(r, p_chosen=0.6 + 0.4 * (i % 2))
                                                   for i, r in enumerate(toy_prefs(16))])
    cfg = DPOConfig(policy=str(tiny_dir), prefs=str(prefs), loss="sigmoid", beta=0.2, batch_size=4, grad_accum=2,
                    max_steps=3, learning_rate=3e-3, progress=False,
                    lora={"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj", "up_proj"]})
    one = tmp_path / "one"
    train_dpo(cfg.model_copy(update={"output_dir": str(one)}))
    two = tmp_path / "two"
    cfg_file = tmp_path / "dpo.yaml"
    cfg_file.write_text(yaml.safe_dump(cfg.model_copy(update={"output_dir": str(two)}).model_dump(mode="json")))
    proc = launch("fsdp2", "dpo", cfg_file, extra=("--mixed_precision", "no"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["processes"] == 2

    a, b = _log(one), _log(two)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):  # the tolerances of test_train_distributed.py
        tol = dict(abs=1e-4, rel=1e-4) if ra["step"] == 1 else dict(abs=1e-3, rel=1e-2)
        for k in ("loss", "margin"):
            assert rb[k] == pytest.approx(ra[k], **tol), (ra["step"], k, ra[k], rb[k])
    wa, wb = _weights(one), _weights(two)
    assert wa.keys() == wb.keys() and not any("lora" in k for k in wb)
    start = _weights(tiny_dir)
    moved = max((wa[k] - start[k]).abs().max().item() for k in wa)
    assert moved > 1e-3  # the merged adapters changed the weights
    for k in wa:  # lr 3e-3 for 3 Adam steps moves weights by up to ~1e-2; reduction order by far less
        torch.testing.assert_close(wb[k], wa[k], atol=5e-4, rtol=1e-3, msg=k)


def test_fsdp2_ppo_generates_gathered_and_saves(tiny_dir, tmp_path):
    """PPO under FSDP2: each rank samples its own lengths with the policy gathered once per rollout
    (a per-layer all-gather at every token would leave the ranks waiting on each other), the reference
    is a separately loaded and sharded model (KL exactly 0 before the first update), and the saved
    policy and value head load."""
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say {w}"} for w in ("hi", "yo", "ok", "no")])
    rm = tmp_path / "rm"
    train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(write_jsonl(tmp_path / "p.jsonl", toy_prefs(4))),
                                    output_dir=str(rm), batch_size=4, max_steps=1, progress=False))
    cfg_file = tmp_path / "ppo.yaml"
    out = tmp_path / "ppo"
    cfg_file.write_text(yaml.safe_dump({"policy": str(tiny_dir), "prompts": str(prompts), "reward": f"rm:{rm}",
                                        "output_dir": str(out), "batch_size": 4, "mini_batch_size": 2,
                                        "max_steps": 2, "max_new_tokens": 24, "progress": False}))
    proc = launch("fsdp2", "ppo", cfg_file, extra=("--mixed_precision", "no"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _log(out)
    assert [r["step"] for r in rows] == [1, 2] and rows[0]["kl"] == 0.0
    assert _weights(out).keys() == _weights(tiny_dir).keys()
    from safetensors.torch import load_file

    assert set(load_file(str(out / "value_head.safetensors"))) == {"weight", "bias"}


def test_fsdp2_reward_model_scores_alike_on_every_rank(tiny_dir, tmp_path):
    """The shipped FSDP2 config loads models RAM-efficiently (real weights on rank 0 only, for
    accelerate to broadcast when it prepares them). PPO's reward model is never prepared: it must
    still be whole on every rank, so the same (prompt, reply) gets the same reward on both, the
    one a single process gives."""
    rm = tmp_path / "rm"
    train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(write_jsonl(tmp_path / "p.jsonl", toy_prefs(4))),
                                    output_dir=str(rm), batch_size=4, max_steps=1, progress=False))
    cfg_file = tmp_path / "ppo.yaml"
    cfg_file.write_text(yaml.safe_dump({"policy": str(tiny_dir), "reward": f"rm:{rm}", "progress": False,
                                        "batch_size": 4, "mini_batch_size": 2}))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "fsdp2.yaml"),
           "--num_processes", "2", "--main_process_port", str(29600 + os.getpid() % 300), "--mixed_precision", "no",
           str(SUPPORT / "fsdp_reward_probe.py"), str(cfg_file)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rank0_only_loading"] is True  # the config does switch transformers' rank-0 loading on
    assert out["env_after"] == "true"  # and the switch is back for the models accelerate prepares

    from rlaif.train.reward_model import RewardScorer

    alone = RewardScorer(str(rm))([[{"role": "user", "content": "say hi"}]], ["hi there, friend."])[0]
    rank0, rank1 = out["scores"]
    assert rank1 == rank0, out
    assert rank0 == pytest.approx(alone, abs=1e-5)


def test_lora_merge_in_the_state_dict_equals_peft(tiny_dir):
    """The merge done on a gathered state dict gives peft's own merge_and_unload, to the last bit of
    float32 rounding."""
    from transformers import AutoModelForCausalLM

    from rlaif.train.distributed import lora_scalings, merge_lora_state_dict
    from rlaif.train.models import LoraSettings, apply_lora

    model = apply_lora(AutoModelForCausalLM.from_pretrained(tiny_dir), LoraSettings(r=4, alpha=12))
    torch.manual_seed(1)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1)  # B starts at zero: give the adapters something to merge
    merged = merge_lora_state_dict(dict(model.state_dict()), lora_scalings(model))
    expected = model.merge_and_unload().state_dict()
    assert merged.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(merged[k], expected[k], atol=1e-6, rtol=1e-6, msg=k)


# ---------------------------------------------------------------- GPUs only (not run here)

gpu = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                         reason="needs 2 CUDA GPUs (NCCL, DeepSpeed ZeRO-3)")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("config", ["zero3", "fsdp2"])
def test_sharded_gpu_ppo_and_rm_save(config, tiny_dir, tmp_path):
    """ZeRO-3 (consolidated 16-bit state dict on every rank, GatheredParameters for sampling, a
    partitioned reference) and FSDP2 over NCCL: PPO runs two steps and saves a loadable model, and
    the reward model trains and saves."""
    if config == "zero3":
        pytest.importorskip("deepspeed")
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"say {w}"} for w in ("hi", "yo", "ok", "no")])
    prefs = write_jsonl(tmp_path / "p.jsonl", toy_prefs(8))
    rm_file = tmp_path / "rm.yaml"
    rm_file.write_text(yaml.safe_dump({"base": str(tiny_dir), "prefs": str(prefs), "output_dir": str(tmp_path / "rm"),
                                       "batch_size": 4, "max_steps": 2, "progress": False}))
    proc = launch(config, "reward_model", rm_file)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from transformers import AutoModelForSequenceClassification

    AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm")
    ppo_file = tmp_path / "ppo.yaml"
    ppo_file.write_text(yaml.safe_dump({"policy": str(tiny_dir), "prompts": str(prompts),
                                        "reward": f"rm:{tmp_path / 'rm'}", "output_dir": str(tmp_path / "ppo"),
                                        "batch_size": 4, "mini_batch_size": 2, "max_steps": 2,
                                        "max_new_tokens": 24, "progress": False}))
    proc = launch(config, "ppo", ppo_file)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _weights(tmp_path / "ppo").keys() == _weights(tiny_dir).keys()


@pytest.mark.gpu
@gpu
def test_deepspeed_accumulation_mismatch_is_refused(tiny_dir, tmp_path):
    pytest.importorskip("deepspeed")
    prefs = write_jsonl(tmp_path / "p.jsonl", toy_prefs(8))
    cfg_file = tmp_path / "rm.yaml"
    cfg_file.write_text(yaml.safe_dump({"base": str(tiny_dir), "prefs": str(prefs), "output_dir": str(tmp_path / "rm"),
                                        "batch_size": 4, "grad_accum": 2, "max_steps": 1, "progress": False}))
    proc = launch("zero2", "reward_model", cfg_file, extra=("--gradient_accumulation_steps", "4"))
    assert proc.returncode != 0 and "gradient_accumulation_steps 4" in proc.stderr
