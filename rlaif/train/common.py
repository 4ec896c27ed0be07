"""Shared pieces of the trainers: reading preference/prompt records, tokenising them with the chat
template (prompt tokens masked), collation, seeding, the `Accelerator`, a JSONL train logger and
model loading.

Every trainer runs unchanged under `accelerate launch` (CPU `--cpu` with gloo, one or more GPUs):
batches are *global* (`split_batches=True`), so a config means the same optimisation whatever the
number of processes, and data order comes from the seed alone.
"""

from __future__ import annotations

import json
import os
import random
import resource
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from pydantic import Field, model_validator

from rlaif.config import Strict
from rlaif.errors import UserError
from rlaif.records import read_jsonl
# tokenising examples (the prompt as the engines build it) lives in rlaif/train/encoding.py
from rlaif.train.encoding import encode, encode_text, render_completion, render_prompt  # noqa: F401

Messages = list[dict]

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


# ---------------------------------------------------------------- records


def field_messages(value: Any, role: str, where: str, field: str) -> Messages:
    """A record field as chat messages: a string becomes one `role` turn; messages are checked."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list) and value and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise UserError(f"{where}: field {field!r}: expected a string or a list of chat messages "
                    "({role, content}), got " + type(value).__name__)


@dataclass
class Pair:
    """One preference pair. `conversational` says whether to use the chat template."""

    prompt: Messages | str
    chosen: Messages | str
    rejected: Messages | str
    p: float  # probability that `chosen` is better
    margin: float = 0.0
    conversational: bool = True


class UnusablePair(UserError):
    """A well-formed record that must not be trained on; `read_pairs` skips it and counts `reason`."""

    def __init__(self, where: str, reason: str, detail: str):
        super().__init__(f"{where}: {detail}")
        self.reason = reason


def parse_pair(rec: dict, where: str) -> Pair:
    """TRL preference shapes: conversational (`prompt` messages, `chosen`/`rejected` assistant
    messages) or plain strings; also implicit-prompt pairs (`chosen`/`rejected` full conversations
    sharing every turn but the last assistant reply, as HH-RLHF has them). `p_chosen` is the soft
    label, 1.0 when absent.

    A completion is assistant text only: a record whose transcripts differ before their last
    assistant turn, or whose completion holds another role's turn, would train the model to write
    that text. It raises `UnusablePair` (a UserError naming the record); `read_pairs` skips such
    records and counts them by reason, as the HH-RLHF reader does with its prefix mismatches."""
    for key in ("chosen", "rejected"):
        if key not in rec:
            raise UserError(f"{where}: missing field {key!r}; expected a preference record with "
                            "prompt, chosen, rejected (and optionally p_chosen)")
    p = rec.get("p_chosen", 1.0)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
        raise UserError(f"{where}: field 'p_chosen': expected a number in [0, 1], got {p!r}")
    margin = rec.get("margin", 0.0)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)):
        raise UserError(f"{where}: field 'margin': expected a number, got {margin!r}")
    prompt = rec.get("prompt")
    strings = isinstance(rec["chosen"], str) and isinstance(rec["rejected"], str) and (
        prompt is None or isinstance(prompt, str))
    if strings:
        return Pair(prompt or "", rec["chosen"], rec["rejected"], float(p), float(margin), False)
    chosen = field_messages(rec["chosen"], "assistant", where, "chosen")
    rejected = field_messages(rec["rejected"], "assistant", where, "rejected")
    if prompt is None:  # implicit prompt: everything before the last assistant reply
        if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
            raise UnusablePair(where, "no_final_assistant_turn",
                               "chosen and rejected must each end with an assistant turn")
        if chosen[:-1] != rejected[:-1]:
            raise UnusablePair(where, "differ_before_last_assistant_turn",
                               "chosen and rejected differ before their last assistant turn")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
        if not prompt:
            raise UserError(f"{where}: no 'prompt' and chosen/rejected share no leading messages")
    else:
        prompt = field_messages(prompt, "user", where, "prompt")
        for key, completion in (("chosen", chosen), ("rejected", rejected)):
            if any(m["role"] != "assistant" for m in completion):
                raise UnusablePair(where, "non_assistant_turn_in_completion",
                                   f"field {key!r} holds a turn that is not the assistant's")
    return Pair(prompt, chosen, rejected, float(p), float(margin), True)


def read_pairs(path: str | Path) -> tuple[list[Pair], Counter]:
    """-> (usable pairs, count of skipped records by reason). A malformed record is a UserError;
    a file without one usable pair too."""
    pairs: list[Pair] = []
    skipped: Counter = Counter()
    rows = read_jsonl(path)
    for i, rec in enumerate(rows, 1):
        try:
            pairs.append(parse_pair(rec, f"{path}:{i}"))
        except UnusablePair as e:
            skipped[e.reason] += 1
    if not pairs:
        raise UserError(f"{path}: no usable preference pairs ({len(rows)} read; skipped: {dict(skipped) or 'none'})")
    return pairs, skipped


def read_prompts(path: str | Path) -> list[Messages]:
    """A prompt set (JSONL or text, a path or a shipped name like `red_team`) as chat messages."""
    from rlaif.prompts_io import read_prompts as read_prompt_set

    return [r["prompt"] for r in read_prompt_set(path)]


def pad(seqs: Sequence[Sequence[int]], value: int, side: str = "right") -> torch.Tensor:
    n = max(len(s) for s in seqs)
    out = torch.full((len(seqs), n), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        if side == "right":
            out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        else:
            out[i, n - len(s):] = torch.tensor(s, dtype=torch.long)
    return out


def pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    if tokenizer.eos_token_id is not None:
        return tokenizer.eos_token_id
    return 0


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


def disable_dropout(model):
    """Dropout off in every module, as TRL's trainers do by default (`disable_dropout=True`). With
    it on, the training forward is a different function from the one that gave the reference and
    old log-probs (computed in eval mode or by a frozen copy), so at step 0 DPO's implicit rewards
    and PPO's ratio and KL are noise instead of 0. TRL zeroes `nn.Dropout` modules; the attention
    dropout of most HF models is a float on the attention module read in train mode (Llama's
    `attention_dropout`), so those go to 0 as well. The config is left as it was (the saved model
    keeps its dropout settings for whoever fine-tunes it next)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        rates = [k for k, v in vars(module).items()
                 if "dropout" in k and isinstance(v, float) and not isinstance(v, bool)]
        for k in rates:
            setattr(module, k, 0.0)
    return model


def start_training(model, cfg: TrainConfig):
    """Train mode, with activation checkpointing when the config asks for it."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    model.train()
    return model


@contextmanager
def reference_model(accelerator, model, tokenizer, reference: str | None, policy: str, dtype: str):
    """The model the reference log-probs come from, for the length of a `with`: the policy itself at
    its starting weights when `reference` is None or names the policy, else that model loaded on
    its own (dropout off), prepared for inference and dropped afterwards. Its tokenizer must be
    the policy's (`tokenizer`): the log-probs are taken on the policy's token ids."""
    if reference is None or resolve(reference) == resolve(policy):
        yield model
        return
    from transformers import AutoModelForCausalLM

    path = resolve(reference)
    if load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"reference {reference}: its tokenizer differs from the policy's ({policy}); "
                        "the reference must share the policy's vocabulary")
    from rlaif.train.distributed import prepare_frozen

    # placed and sharded like the policy (FSDP2 / ZeRO-3 partitioned, never a whole copy per GPU)
    ref = prepare_frozen(accelerator, disable_dropout(AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))))
    try:
        yield ref
    finally:
        del ref


def torch_dtype(name: str):
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}
    if name not in table:
        raise UserError(f"dtype {name!r}: expected one of {', '.join(table)}")
    return table[name]


def resolve(spec: str) -> str:
    """A model spec (`embedded:NAME`, a local dir, a hub id) -> what `from_pretrained` accepts."""
    from rlaif.backends.embedded import resolve_model_dir

    return resolve_model_dir(str(spec))


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


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
    params = [p for p in model.parameters() if p.requires_grad]
    opt = adamw(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    warm = cfg.warmup_steps

    def factor(step: int) -> float:  # linear warmup, then constant
        return min(1.0, (step + 1) / warm) if warm else 1.0

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def peak_memory_mb() -> dict:
    """Peak resident memory of this process (and of CUDA, when used)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = {"peak_rss_mb": round(rss / 1024 if sys.platform != "darwin" else rss / 2**20, 1)}
    if torch.cuda.is_available():
        out["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


class TrainLog:
    """`train_log.jsonl`: one JSON object per logged step, written by the main process only,
    flushed each line so a killed run keeps its curve."""

    def __init__(self, path: str | Path, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled
        self.rows: list[dict] = []
        self.started = time.time()
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", encoding="utf-8")

    def log(self, row: dict) -> dict:
        row = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in row.items()}
        row.setdefault("elapsed_s", round(time.time() - self.started, 3))
        self.rows.append(row)
        if self.enabled:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
        return row

    def close(self) -> None:
        if self.enabled and not self._f.closed:
            self._f.close()


def gather_mean(accelerator, value: torch.Tensor) -> float:
    """Mean over processes of a per-process scalar (equal shares of a global batch)."""
    v = value.detach().float().reshape(1)
    return accelerator.gather(v).mean().item()


def summary(log: TrainLog, steps: int, seconds: float, keys: Sequence[str]) -> dict:
    """Start/end values of the logged curves plus time per step and peak memory."""
    out: dict[str, Any] = {"steps": steps, "seconds": round(seconds, 3),
                           "seconds_per_step": round(seconds / max(steps, 1), 4), **peak_memory_mb()}
    for k in keys:
        vals = [r[k] for r in log.rows if k in r and r[k] is not None]
        if vals:
            out[f"{k}_start"], out[f"{k}_end"] = vals[0], vals[-1]
    return out


def write_json(path: str | Path, obj: Any) -> None:
    from rlaif.records import write_atomic

    write_atomic(Path(path), json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")



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


def finish_run(out: Path, stage: str, cfg: TrainConfig, result: dict, log: TrainLog,
               curve_keys: Sequence[str]) -> None:
    """Main process, after training: summary.json, a curves plot, the manifest entry."""
    from rlaif.manifest import update_manifest
    from rlaif.train.plots import plot_curves

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", result)
    if log.rows:
        plot_curves(log.rows, curve_keys, out / "train_curves.png", title=stage)
    update_manifest(out, stage, {"config": cfg.model_dump(mode="json"), "summary": result,
                                 "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


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
