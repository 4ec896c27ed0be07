"""The fields every trainer's config shares (TRL style: one config object per trainer, extending
`TrainConfig`; `rlaif/cli_flags.py` makes the trainer commands' flags from them)."""

from __future__ import annotations

from pydantic import Field, model_validator

from rlaif.config import DEFAULT_MODEL, Strict


class TrainConfig(Strict):
    """Fields every trainer shares (TRL style: one config object per trainer extends this)."""

    output_dir: str = Field(
        "out", description="the run's output folder: the model, train_log.jsonl, summary.json and the curves")
    epochs: float = Field(1.0, gt=0, description="passes over the data (fractions allowed)")
    max_steps: int | None = Field(None, ge=1, description="optimizer steps; overrides epochs when set")
    learning_rate: float = Field(1e-5, gt=0, description="peak learning rate of AdamW, reached after warmup_steps")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay")
    warmup_steps: int = Field(0, ge=0, description="optimizer steps of linear warmup from 0")
    batch_size: int = Field(8, ge=1, description="global: split over processes")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated into one optimizer step")
    max_length: int = Field(
        512, ge=8, description="tokens per sequence, prompt and completion together; longer ones are cut")
    system_prompt: str | None = Field(
        None, description="the policy engine block's system prompt: prompts are built with it, as the engines "
                          "build them")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient's norm to this; unset: no clipping")
    seed: int = Field(0, description="seed of the data order, the initialisation and any sampling")
    eval_file: str | None = Field(
        None, description="a held-out file in the training file's format, evaluated every eval_every steps")
    eval_every: int = Field(50, ge=1, description="optimizer steps between evals (and at the end)")
    eval_batch_size: int = Field(16, ge=1, description="sequences per evaluation forward pass")
    log_every: int = Field(1, ge=1, description="optimizer steps between rows of train_log.jsonl")
    dtype: str = Field(
        "float32", description="\"float32\" | \"bfloat16\" | \"float16\": weights in memory while training")
    gradient_checkpointing: bool = Field(
        False, description="recompute activations in the backward pass: less memory, one more forward of time "
                           "(TRL's trainer configs default to True; ours to False)")
    progress: bool = Field(True, description="show a progress bar")
    save: bool = Field(True, description="save the trained model in output_dir")


class PairTrainConfig(TrainConfig):
    """Fields of the trainers on prompt + completion tokens (SFT, reward model, DPO, KTO, ORPO)."""

    max_prompt_length: int | None = Field(
        None, ge=1, description="prompt tokens kept (the end of the prompt) when a prompt is longer; default "
                                "max_length // 2. The cut depends on the prompt alone, so both sides of a pair see "
                                "the same prompt tokens; the completions then fill what is left of max_length (as "
                                "TRL's max_prompt_length).")

    @model_validator(mode="after")
    def _prompt_fits(self):
        if self.max_prompt_length is not None and self.max_prompt_length >= self.max_length:
            raise ValueError(f"max_prompt_length {self.max_prompt_length} must be below max_length "
                             f"{self.max_length} (the completions need room)")
        return self


class ReferencedConfig(PairTrainConfig):
    """Fields of the trainers that keep a frozen reference policy (DPO, KTO)."""

    policy: str = Field(DEFAULT_MODEL, description="starting policy and reference: embedded:NAME, local dir, hub id")
    reference: str | None = Field(
        None, description="another reference model (same tokenizer); None: the starting policy")


__all__ = ["TrainConfig", "PairTrainConfig", "ReferencedConfig"]
