"""Loading the models a trainer works on and putting them in training shape: model specs resolved,
tokenizers with a pad token, dtypes, the policy (dropout off, LoRA adapters when asked), activation
checkpointing, and the frozen reference placed and sharded like the policy."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from pydantic import Field

from rlaif.config import Strict
from rlaif.errors import UserError
from rlaif.train.config import TrainConfig


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
    path = resolve(reference)
    if load_tokenizer(path).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"reference {reference}: its tokenizer differs from the policy's ({policy}); "
                        "the reference must share the policy's vocabulary")
    from rlaif.train.distributed import prepare_frozen

    # placed and sharded like the policy (FSDP2 / ZeRO-3 partitioned, never a whole copy per GPU)
    ref = prepare_frozen(accelerator, load_policy(path, dtype))
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


class LoraSettings(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] | str = "all-linear"


def apply_lora(model, lora: LoraSettings):
    """LoRA adapters (`peft`, the `lora` extra) on a causal LM: only they train."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise UserError("LoRA needs peft: pip install 'rlaif-kit[lora]'") from None
    return get_peft_model(model, LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                            target_modules=lora.target_modules, task_type="CAUSAL_LM"))


def load_policy(path: str, dtype: str, lora: LoraSettings | None = None, dropout: bool = False):
    """A causal LM to train (or a frozen reference): dropout off (reference log-probs, when taken,
    come from these weights) unless `dropout` keeps the model's own (SFT, which has no reference,
    as TRL's SFT leaves it); LoRA adapters on it when `lora` is set."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
    if not dropout:
        disable_dropout(model)
    return apply_lora(model, lora) if lora else model


__all__ = ["disable_dropout", "start_training", "reference_model", "torch_dtype", "resolve", "load_tokenizer",
           "LoraSettings", "apply_lora", "load_policy"]
