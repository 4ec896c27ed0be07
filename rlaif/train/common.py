"""Shared pieces of the trainers: the config every trainer extends, log-prob and masking maths,
seeding, the `Accelerator`, the data order, the optimizer, and the module entry point. Examples,
model loading and the run's log live in their own modules (examples.py, models.py, run_log.py);
this module hands their names on, so a trainer imports its toolkit from one place.

Every trainer runs unchanged under `accelerate launch` (CPU `--cpu` with gloo, one or more GPUs):
batches are *global* (`split_batches=True`), so a config means the same optimisation whatever the
number of processes, and data order comes from the seed alone.
"""

from __future__ import annotations

import json
import os
import random
import sys

import torch
from pydantic import Field, model_validator

from rlaif.config import Strict
from rlaif.errors import UserError
# the trainers take these from here: tokenising (rlaif/train/encoding.py), examples
# (rlaif/train/examples.py), model loading (rlaif/train/models.py) and the run's log (rlaif/train/run_log.py)
from rlaif.train.encoding import encode, encode_text, render_completion, render_prompt  # noqa: F401
from rlaif.train.examples import (Messages, Pair, Skipped, UnusablePair, field_messages, pad, pad_id,  # noqa: F401
                                  parse_pair, read_pairs, read_prompts)
from rlaif.train.models import (disable_dropout, load_tokenizer, reference_model, resolve,  # noqa: F401
                                start_training, torch_dtype)
from rlaif.train.run_log import (TrainLog, finish_run, gather_mean, peak_memory_mb, summary,  # noqa: F401
                                 write_json)


# ---------------------------------------------------------------- configs


class TrainConfig(Strict):
    """Fields every trainer shares (TRL style: one config object per trainer extends this)."""

    output_dir: str = "out"
    epochs: float = Field(1.0, gt=0)  # passes over the data (fractions allowed)
    max_steps: int | None = Field(None, ge=1)  # optimizer steps; overrides epochs when set
    learning_rate: float = Field(1e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    batch_size: int = Field(8, ge=1)  # global: split over processes
    grad_accum: int = Field(1, ge=1)
    max_length: int = Field(512, ge=8)
    # the policy engine block's system prompt: prompts are built with it, as the engines build them
    system_prompt: str | None = None
    max_grad_norm: float | None = Field(1.0, gt=0)
    seed: int = 0
    eval_file: str | None = None
    eval_every: int = Field(50, ge=1)  # optimizer steps between evals (and at the end)
    eval_batch_size: int = Field(16, ge=1)
    log_every: int = Field(1, ge=1)
    dtype: str = "float32"  # "float32" | "bfloat16" | "float16": weights in memory while training
    # recompute activations in the backward pass: less memory, one more forward of time
    # (TRL's trainer configs default to True; ours to False)
    gradient_checkpointing: bool = False
    progress: bool = True
    save: bool = True


class PairTrainConfig(TrainConfig):
    """Fields of the trainers on preference pairs (reward model, DPO)."""

    # prompt tokens kept (the end of the prompt) when a prompt is longer; default max_length // 2.
    # The cut depends on the prompt alone, so both sides of a pair see the same prompt tokens; the
    # completions then fill what is left of max_length (as TRL's max_prompt_length).
    max_prompt_length: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _prompt_fits(self):
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length {self.max_prompt_length} must be below max_length "
                             f"{self.max_length} (the completions need room)")
        return self


def check_batch(cfg: TrainConfig, accelerator) -> None:
    n = accelerator.num_processes
    for name in ("batch_size", "eval_batch_size"):
        if getattr(cfg, name) % n:
            raise UserError(f"{name} {getattr(cfg, name)} is a global batch and must divide evenly "
                            f"over {n} processes")


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor,
                   average: bool = False) -> torch.Tensor:
    """Sum (or mean) over masked positions of log p(token_t | tokens_<t). `mask` marks the tokens
    being scored (the completion), aligned with `input_ids`."""
    logits = logits[:, :-1].float()
    labels = input_ids[:, 1:]
    m = mask[:, 1:].to(logits.dtype)
    logp = token_logps(logits, labels)
    total = (logp * m).sum(-1)
    return total / m.sum(-1).clamp(min=1) if average else total


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[labels] without materialising the full log-softmax twice."""
    return torch.gather(logits.log_softmax(-1), -1, labels.unsqueeze(-1)).squeeze(-1)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, accelerator=None) -> torch.Tensor:
    """(x − mean) / std over the masked entries (std unbiased, as TRL/baselines do). With an
    `accelerator`, mean and variance are those of every process's masked entries together (the
    sums are gathered; shard shapes may differ), so whitening a global batch split over processes
    equals whitening it whole. TRL whitens each process's share on its own."""
    m = mask.to(x.dtype)

    def total(v: torch.Tensor) -> torch.Tensor:
        return v if accelerator is None else accelerator.gather(v.reshape(1, -1)).sum(0)

    s, n = total(torch.stack([(x * m).sum(), m.sum()]))
    mean = s / n.clamp(min=1)
    var = total(((x - mean) ** 2 * m).sum().reshape(1))[0] / n.clamp(min=1)
    if n > 1:
        var = var * n / (n - 1)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1)


# ---------------------------------------------------------------- runtime


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
    random.seed(seed)


def make_accelerator(cfg: TrainConfig, sync_with_dataloader: bool = True):
    """An Accelerator with global batches split over processes. `accelerate launch` settings
    (processes, --cpu, mixed precision) come from the environment as usual.

    `sync_with_dataloader`: accelerate steps the optimizer at every `accumulate` while the last
    batch of a prepared dataloader is out. Right when micro-batches *are* the dataloader's batches
    (reward model, DPO); PPO accumulates over minibatches of one rollout batch and turns it off."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin

    # Several processes and no GPU (torchrun, or `accelerate launch --multi_gpu` on a CPU box): run
    # them on CPU with gloo. (`accelerate launch --cpu --num_processes N` starts one process unless
    # it is given an mpirun hostfile.)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1 or int(os.environ.get("LOCAL_RANK", "-1")) >= 0
    acc = Accelerator(gradient_accumulation_plugin=GradientAccumulationPlugin(
                          num_steps=cfg.grad_accum, sync_with_dataloader=sync_with_dataloader),
                      cpu=distributed and not torch.cuda.is_available(),
                      dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=True))
    from rlaif.train.distributed import check_launch

    check_launch(acc, cfg.grad_accum)  # FSDP2 over gloo on CPU; DeepSpeed's own accumulation checked
    check_batch(cfg, acc)
    return acc


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """A permutation of range(n) from (seed, epoch) only: the same on every process."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def example_stream(cfg: TrainConfig, n_examples: int, per_step: int | None = None) -> tuple[int, list[int]]:
    """(steps, example indices in training order): seeded epoch permutations back to back, cut to
    exactly steps × per_step (default batch_size × grad_accum: one optimizer step), so every batch
    is full."""
    per_step = per_step or cfg.batch_size * cfg.grad_accum
    steps = plan_steps(cfg, n_examples, per_step)
    need = steps * per_step
    order: list[int] = []
    epoch = 0
    while len(order) < need:
        order += epoch_order(n_examples, cfg.seed, epoch)
        epoch += 1
    return steps, order[:need]


def plan_steps(cfg: TrainConfig, n_examples: int, per_step: int | None = None) -> int:
    per_step = per_step or cfg.batch_size * cfg.grad_accum
    if cfg.max_steps:
        return cfg.max_steps
    return max(1, int(cfg.epochs * n_examples // per_step))


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (what TRL/Trainer use by default, `adamw_torch_fused`):
    one kernel over every parameter. Torch's CPU default is a Python loop over the tensors, which
    took about 30 % of a reward-model step on the embedded model. The loop stays as the fallback for
    devices without the fused kernel."""
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def make_optimizer(model, cfg: TrainConfig, steps: int):
    """AdamW and a linear warmup over `cfg.warmup_steps` optimizer steps, then a constant rate. The
    scheduler is to be stepped once per optimizer step (PPO and GRPO take several per rollout batch),
    so the warmup lasts what it says whatever μ or the PPO epochs. `steps`: the run's optimizer steps
    (the schedule is constant after warmup, so unused for now)."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warm = cfg.warmup_steps

    def factor(step: int) -> float:  # linear warmup, then constant
        return min(1.0, (step + 1) / warm) if warm else 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def run_main(config_cls, train_fn, argv: list[str] | None, name: str) -> int:
    """Module entry point shared by the trainers: `python -m rlaif.train.X CONFIG.yaml [--set k=v]`,
    also under `accelerate launch -m rlaif.train.X ...`. A UserError is one line and exit 2."""
    import argparse

    from rlaif.config import load_config

    ap = argparse.ArgumentParser(prog=f"python -m rlaif.train.{name}")
    ap.add_argument("config", help="YAML file with the trainer's config")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config field")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(config_cls, args.config, args.set)
        result = train_fn(cfg)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) == 0:  # one summary line, from the main process
        print(json.dumps(result, sort_keys=True, default=str))
    return 0


def build_config(config_cls, config_path: str | None, fields: dict, overrides: list[str] | None):
    """A trainer config from an optional YAML file, then explicit CLI flags (those not None),
    then `--set key=value` overrides; one UserError line on a bad value."""
    from rlaif.config import apply_overrides, read_yaml, validate

    data: dict = {}
    if config_path:
        data = read_yaml(config_path)
        if not isinstance(data, dict):
            raise UserError(f"{config_path}: expected a YAML mapping at the top level")
    data.update({k: v for k, v in fields.items() if v is not None})
    return validate(config_cls, apply_overrides(data, overrides), config_path or "command line")
