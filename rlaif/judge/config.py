"""How the judge asks: one `JudgeConfig` for every caller (the label stage, eval-labeler, policy
evaluation, rank, rounds, best-of-N, PPO/GRPO rewards, annotation, the reward server). A stage's
block extends it (the label stage adds its margin rule); nothing rebuilds it from scratch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, model_validator

from rlaif.config import Strict, validate
from rlaif.errors import UserError


class JudgeConfig(Strict):
    """Settings of the judge (a `judge:` / `label:` YAML block; the CLI flags map onto it)."""

    mode: Literal["pairwise", "direct"] = "pairwise"  # how a pair is compared: options A/B, or two 1-10 scores
    debias: bool = True  # judge both orders and average
    cot: bool = False  # rationale first, then the options
    clamp: tuple[float, float] = (0.4, 0.6)  # band for CoT votes
    cot_max_tokens: int = Field(64, ge=1)
    cot_temperature: float = Field(0.0, ge=0)  # 0: greedy rationale (self_consistency = 1)
    self_consistency: int = Field(1, ge=1)  # sampled rationales per (principle, order)
    sc_temperature: float = Field(0.7, gt=0)
    principles: int = Field(1, ge=1)  # principle ensemble size
    few_shot: int = Field(0, ge=0)
    seed: int = 0
    max_conversation_chars: int = Field(3000, ge=200)  # older turns cut first
    max_response_chars: int = Field(1500, ge=100)
    sanitize: bool = True  # replies cannot open or close the template's fences (the audit measures it off too)
    pairwise_template: str = "label_pairwise"
    cot_template: str = "label_cot"
    direct_template: str = "label_direct"

    @model_validator(mode="after")
    def _consistent(self):
        lo, hi = self.clamp
        if not 0 <= lo <= 0.5 <= hi <= 1:
            raise ValueError(f"clamp: expected 0 <= lo <= 0.5 <= hi <= 1, got [{lo}, {hi}]")
        if self.self_consistency > 1 and not self.cot:
            raise ValueError("self_consistency > 1 samples rationales, so it needs cot")
        if self.mode == "direct" and self.cot:
            raise ValueError("direct scoring reads the score right away; it cannot be combined with cot")
        return self

    def judge_fields(self) -> dict:
        """The fields that say how the judge asks (a stage's extra fields left out)."""
        return self.model_dump(include=set(JudgeConfig.model_fields))


def make_config(model: type[JudgeConfig] = JudgeConfig, source: str = "judge options", **values) -> JudgeConfig:
    """A JudgeConfig (or a stage's extension of it) from keyword values, None meaning "the default";
    a problem becomes one UserError line naming `source`."""
    data = {k: v for k, v in values.items() if v is not None}
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        if not first["loc"] and first["type"] == "value_error":  # a rule across fields
            raise UserError(f"{source}: {str(first['ctx']['error'])}") from None
    return validate(model, data, source)


__all__ = ["JudgeConfig", "make_config"]
