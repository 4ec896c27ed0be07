"""One shape for every trainer: the start of a run, the optimisation loop of the trainers that learn
from a dataset, and the end of a run; and the module entry point. A trainer's own file holds its
config, its batches and its loss, and reads

    run = Run.start(cfg, "dpo", cfg.policy)            # accelerator, seed, model path, tokenizer
    ... its data (rlaif/train/examples.py), its model (rlaif/train/models.py), its batches ...
    steps, order = example_stream(cfg, len(pairs))
    model, optimizer, loader, scheduler = run.prepare(model, order, collate, steps)
    step = run.optimise(model, optimizer, scheduler, loader, steps, loss)   # PPO, GRPO: loops of their own
    return run.finish(model, step, {...}, CURVES, PLOTTED)

Every trainer runs unchanged under `accelerate launch` (CPU `--cpu` with gloo, one or more GPUs):
batches are *global* (`split_batches=True`), so a config means the same optimisation whatever the
number of processes, and data order comes from the seed alone.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rlaif.errors import UserError
from rlaif.train.config import TrainConfig
from rlaif.train.distributed import save_model
from rlaif.train.models import load_tokenizer, resolve
from rlaif.train.run_log import TrainLog, finish_run, gather_mean, summary

# (batch, optimizer steps done) -> (the loss to backpropagate, the batch's metrics as detached tensors)
LossFn = Callable[[dict, int], "tuple[torch.Tensor, dict[str, torch.Tensor]]"]
# (the micro-batches' metrics of one optimizer step, its number) -> the entries of its log row
RowFn = Callable[[list, int], dict]


# ---------------------------------------------------------------- runtime


def seed_everything(seed: int) -> None:
    from transformers import set_seed

    set_seed(seed)
    random.seed(seed)


def check_batch(cfg: TrainConfig, accelerator) -> None:
    n = accelerator.num_processes
    for name in ("batch_size", "eval_batch_size"):
        if getattr(cfg, name) % n:
            raise UserError(f"{name} {getattr(cfg, name)} is a global batch and must divide evenly "
                            f"over {n} processes")


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


# ---------------------------------------------------------------- a run: start, loop, end


@dataclass
class Run:
    """What a training run holds from its start to its end: the config, the stage name (its manifest
    entry, the prefix of its console lines), the Accelerator, the output folder, the resolved model
    path and its tokenizer, what the summary will say of the data; once begun, the log
    (`train_log.jsonl`, main process only), the progress bar and the start time."""

    cfg: TrainConfig
    stage: str
    accelerator: Any
    out: Path
    path: str
    tokenizer: Any
    data: dict = field(default_factory=dict)
    log: TrainLog | None = None
    bar: Any = None
    started: float = 0.0

    @classmethod
    def start(cls, cfg: TrainConfig, stage: str, model: str, sync_with_dataloader: bool = True) -> Run:
        """The Accelerator (its checks of the launch and the batch sizes), the seed, the model spec
        resolved and its tokenizer."""
        accelerator = make_accelerator(cfg, sync_with_dataloader)
        seed_everything(cfg.seed)
        path = resolve(model)
        return cls(cfg, stage, accelerator, Path(cfg.output_dir), path, load_tokenizer(path))

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def left_out(self, skipped, key: str, what: str = "") -> None:
        """The records a file left out (`Skipped`): one console line from the main process, and by
        reason under `key` in the summary."""
        skipped.announce(f"{self.stage} ({what})" if what else self.stage, self.main)
        self.data[key] = dict(skipped)

    def prepare(self, model, stream: Sequence, collate, steps: int):
        """The optimizer and the training loader (global batches of `stream`, collated), prepared
        with the model. -> (model, optimizer, loader, scheduler)."""
        loader = torch.utils.data.DataLoader(stream, batch_size=self.cfg.batch_size, collate_fn=collate)
        optimizer, scheduler = make_optimizer(model, self.cfg, steps)
        return self.accelerator.prepare(model, optimizer, loader, scheduler)

    def eval_loader(self, n: int, collate):
        """Batches of examples 0..n−1 (an eval file), sharded over processes."""
        return self.accelerator.prepare_data_loader(torch.utils.data.DataLoader(
            list(range(n)), batch_size=self.cfg.eval_batch_size, collate_fn=collate))

    def begin(self, steps: int, desc: str | None = None) -> None:
        """The log, the progress bar and the clock, right before the first step."""
        from tqdm.auto import tqdm

        self.log = TrainLog(self.out / "train_log.jsonl", enabled=self.main)
        self.bar = tqdm(total=steps, desc=desc or self.stage, disable=not (self.cfg.progress and self.main),
                        file=sys.stderr, dynamic_ncols=True)
        self.started = time.time()

    def mean_row(self, micro: list[dict], step: int) -> dict:
        """The default log row: each metric's mean over the step's micro-batches and the processes."""
        return {k: gather_mean(self.accelerator, torch.stack([m[k] for m in micro]).mean()) for k in micro[0]}

    def optimise(self, model, optimizer, scheduler, loader, steps: int, loss_fn: LossFn,
                 evals: dict[str, Callable[[], dict]] | None = None, row_fn: RowFn | None = None,
                 desc: str | None = None) -> int:
        """The loop of the trainers that learn from a dataset: for each micro-batch, its loss under
        `accumulate` (backward; at an optimizer step the gradient clipped to `max_grad_norm`, the
        optimizer and the scheduler stepped); every `log_every` optimizer steps a log row (`row_fn`
        of the step's micro-batch metrics, default their means), every `eval_every` (and at the
        end) each of `evals` run and its metrics logged as `NAME_metric`. -> optimizer steps taken."""
        cfg, acc = self.cfg, self.accelerator
        self.begin(steps, desc)
        step, micro = 0, []
        for batch in loader:
            with acc.accumulate(model):
                loss, metrics = loss_fn(batch, step)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            micro.append(metrics)
            if not acc.sync_gradients:
                continue
            step += 1
            self.bar.update(1)
            row = None
            if step % cfg.log_every == 0 or step == steps:
                row = {"step": step, **(row_fn or self.mean_row)(micro, step), "lr": scheduler.get_last_lr()[0]}
            micro = []
            if evals and (step % cfg.eval_every == 0 or step == steps):
                row = row or {"step": step}
                for name, evaluate in evals.items():
                    row.update({f"{name}_{k}": v for k, v in evaluate().items()})
            if row is not None:
                self.log.log(row)
                self.bar.set_postfix(loss=f"{row.get('loss', float('nan')):.4f}")
        return step

    def finish(self, model, step: int, result: dict, summary_keys: Sequence[str], curve_keys: Sequence[str],
               **save) -> dict:
        """The end of a run: the log closed, the summary (the curves' start and end, time per step,
        peak memory, the processes, what the data files left out, then `result`), the model saved
        (on every rank: under FSDP / ZeRO-3 the full state dict is gathered collectively; `save`:
        `save_model`'s options), and from the main process summary.json, the curves plot and the
        manifest entry. -> the summary."""
        acc = self.accelerator
        self.bar.close()
        seconds = time.time() - self.started
        self.log.close()
        out = summary(self.log, step, seconds, summary_keys)
        out.update({"processes": acc.num_processes, "mixed_precision": acc.mixed_precision, **self.data, **result})
        acc.wait_for_everyone()
        if self.cfg.save:
            save_model(acc, model, self.out, self.tokenizer, **save)
        if self.main:
            finish_run(self.out, self.stage, self.cfg, out, self.log, curve_keys)
        acc.wait_for_everyone()
        return out


# ---------------------------------------------------------------- entry point


def run_main(config_cls, train_fn, name: str, argv: list[str] | None = None) -> int:
    """Module entry point shared by the trainers: `python -m rlaif.train.X CONFIG.yaml [--set k=v]`,
    also under `accelerate launch -m rlaif.train.X ...`. A UserError is one line and exit 2. A
    trainer's `main` is `partial(run_main, ItsConfig, its_train, "X")`."""
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


__all__ = ["Run", "seed_everything", "make_accelerator", "check_batch", "epoch_order", "example_stream",
           "plan_steps", "adamw", "make_optimizer", "run_main"]
