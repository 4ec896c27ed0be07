"""The fields every trainer's config shares (TRL style: one config object per trainer, extending
`TrainConfig`; `rlaif/cli_flags.py` makes the trainer commands' flags from them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from rlaif.config import Strict


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
    """Fields of the trainers on prompt + completion tokens (SFT, reward model, DPO, KTO, ORPO)."""

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


__all__ = ["TrainConfig", "PairTrainConfig"]
