"""Group-relative policy optimisation with AI feedback: GRPO (Shao et al. 2024, DeepSeekMath), RLOO
(Ahmadian et al. 2024) and Dr. GRPO (Liu et al. 2025) — no value model, the group is the baseline.

For each prompt x, sample a group of G replies y_1..y_G from the policy (temperature T) and score
them, R_i = Σ_k w_k · R_k(x, y_i) (rlaif/train/rewards.py). The advantage of reply i, the same for
each of its tokens:

    grpo     A_i = (R_i − mean_j R_j) / (std_j R_j + ε)      (`scale_rewards: group`; `batch`: the
                                                               std over the whole global batch, every
                                                               process's replies; `none`: no scaling)
    dr_grpo  A_i =  R_i − mean_j R_j                          (never scaled)
    rloo     A_i =  R_i − 1/(G−1) · Σ_{j≠i} R_j  = G/(G−1) · (R_i − mean_j R_j)

with the std unbiased and ε = 1e-4 (as TRL). A reply whose reward failed has no R_i: it is left out
of its group's mean, std and leave-one-out sum, and out of the loss; a group with fewer than two
scored replies gives no signal (all its replies are left out).

Per response token t of reply i, with ρ_t = π_θ(y_t | x, y_<t) / π_old(y_t | x, y_<t) (log-probs at
temperature T, π_old the policy that sampled):

    ℓ_t = −min(ρ_t · A_i, clip(ρ_t, 1 − ε_low, 1 + ε_high) · A_i) + β · KL_t,
    KL_t = π_ref/π_θ − log(π_ref/π_θ) − 1                      (Schulman's k3 estimator, ≥ 0)

(`use_bias_correction_kl`: KL_t · ρ_t instead, as TRL ≥ 1.x does by default after DeepSeek-V3.2,
which makes the KL gradient the unbiased reverse-KL one; off by default here, as in the paper.)

and the loss aggregates ℓ over the response tokens (mask m, 1 up to and including the first EOS)
of the N replies of the batch (`loss_type`):

    grpo     1/N · Σ_i (Σ_t m_it ℓ_it) / (Σ_t m_it)             per-sequence mean, then the mean
    bnpo     (Σ_it m_it ℓ_it) / (Σ_it m_it)                     token mean across the batch
    dr_grpo  (Σ_it m_it ℓ_it) / (N · max_new_tokens)            Dr. GRPO's constant normaliser

`advantage: dr_grpo` takes `loss_type: dr_grpo` with it (the default then); another loss_type is
refused, since the per-reply 1/|o_i| is the very bias Dr. GRPO removes.

Each generation batch is optimised `num_iterations` (μ) times; π_old's log-probs then come from a
no-grad pass before the first update (at μ = 1 they equal the current ones, ρ = 1, as in TRL).
β = 0 keeps no reference model in memory. The start (and the reference) is the policy — the SL-CAI
model when a pipeline has one.

This module holds the maths and the config; rlaif/train/grpo_loop.py the loop (sampling, scoring,
logging). Run: `rlaif grpo --prompts FILE --reward ... --out DIR`, or
`accelerate launch -m rlaif.train.grpo_loop CONFIG.yaml`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator

from rlaif.config import DEFAULT_MODEL
from rlaif.train.config import TrainConfig
from rlaif.train.rewards import RewardSpec, check_reward_names

STD_EPS = 1e-4


class GRPOConfig(TrainConfig):
    """TRL-like names (GRPOConfig): num_generations, beta, epsilon, num_iterations, loss_type."""

    policy: str = Field(DEFAULT_MODEL, description="start, and reference when beta > 0")
    reference: str | None = Field(None, description="another reference (same tokenizer); None: the starting policy")
    prompts: str | None = Field(None, description="prompt file (JSONL with a prompt field, or text lines)")
    judge: str | None = Field(
        None, description="judge rewards: the judge's model spec (the pipeline passes its judge engine)")
    constitution: str | None = Field(None, description="judge rewards' default constitution")
    rewards: list[RewardSpec] = Field(
        [RewardSpec(kind="judge_direct")], description="the rewards and their weights (kinds: judge_direct, judge_pairwise, model, rule)")
    reward_weights: dict[str, float] | None = Field(None, description="name -> weight, overrides each reward's own")
    batch_size: int = Field(4, ge=1, description="prompts per step (global); each gives num_generations replies")
    num_generations: int = Field(4, ge=2, description="G")
    advantage: Literal["grpo", "rloo", "dr_grpo"] = Field(
        "grpo", description="grpo (group-normalised), rloo (leave-one-out) or dr_grpo (no std scaling, constant "
                            "normaliser)")
    scale_rewards: Literal["group", "batch", "none"] | None = Field(
        None, description="default: group for grpo, none otherwise")
    loss_type: Literal["grpo", "bnpo", "dr_grpo"] | None = Field(
        None, description="default: dr_grpo for `advantage: dr_grpo` (Dr. GRPO is both its advantage and its "
                          "normaliser), else grpo")
    beta: float = Field(0.0, ge=0, description="KL coefficient; 0: no reference model")
    epsilon: float = Field(0.2, gt=0, description="clip ε_low")
    epsilon_high: float | None = Field(None, gt=0, description="clip ε_high (DAPO); default epsilon")
    num_iterations: int = Field(1, ge=1, description="μ: optimisation passes per generation batch")
    use_bias_correction_kl: bool = Field(False, description="KL_t · ρ_t (TRL's default); False: the paper's k3 term")
    learning_rate: float = Field(1e-6, gt=0, description="peak learning rate of AdamW, reached after warmup_steps")
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature of the rollouts (the log-probs are taken at the same "
                               "temperature)")
    max_new_tokens: int = Field(48, ge=1, description="most tokens sampled per reply")
    missing_eos_penalty: float | None = Field(None, ge=0, description="subtracted from R when no EOS was sampled")
    reward_batch_size: int = Field(16, ge=1, description="replies per reward-model or judge call")

    @field_validator("rewards")
    @classmethod
    def _unique_names(cls, v):
        check_reward_names(v, None)
        return v

    @field_validator("reward_weights")
    @classmethod
    def _weights_name_rewards(cls, v, info):
        check_reward_names(info.data.get("rewards") or [], v)
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.advantage == "rloo" and self.num_generations < 2:
            raise ValueError("advantage rloo needs num_generations >= 2 (a leave-one-out baseline)")
        if self.advantage == "dr_grpo" and self.scale_rewards not in (None, "none"):
            raise ValueError("advantage dr_grpo does not scale by the std; leave scale_rewards unset or none")
        if self.advantage == "dr_grpo" and self.loss_type not in (None, "dr_grpo"):
            # a per-reply 1/|o_i| (grpo) or a token mean over the batch (bnpo) is the length bias
            # Dr. GRPO removes: half of Dr. GRPO is not Dr. GRPO
            raise ValueError(f"loss_type {self.loss_type!r} with advantage dr_grpo: Dr. GRPO normalises by the "
                             "constant N·max_new_tokens; leave loss_type unset or set it to dr_grpo")
        if self.loss_type is None:
            self.loss_type = "dr_grpo" if self.advantage == "dr_grpo" else "grpo"
        return self

    @property
    def scaling(self) -> str:
        if self.scale_rewards is not None:
            return self.scale_rewards
        return "group" if self.advantage == "grpo" else "none"


# ---------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, valid: torch.Tensor, G: int, advantage: str = "grpo",
                     scale: str = "group", batch_sum=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rewards of B·G replies (groups contiguous) -> (advantages, usable, zero-std group flags).
    `valid`: the reply has a reward. `usable`: valid and in a group with ≥ 2 valid replies.
    `batch_sum(t)`: the sum of a tensor over every process (`batch` scaling takes the std of the whole
    global batch, as TRL does by gathering first; default: this process's replies are the batch)."""
    r = torch.where(valid, rewards, torch.zeros_like(rewards)).view(-1, G).double()
    v = valid.view(-1, G).double()
    n = v.sum(1, keepdim=True)
    total = (r * v).sum(1, keepdim=True)
    mean = total / n.clamp(min=1)
    std = (((r - mean) ** 2 * v).sum(1, keepdim=True) / (n - 1).clamp(min=1)).sqrt()
    if advantage == "rloo":
        adv = r - (total - r) / (n - 1).clamp(min=1)
    else:
        adv = r - mean
    if scale == "group":
        adv = adv / (std + STD_EPS)
    elif scale == "batch":
        batch_sum = batch_sum or (lambda t: t)
        flat, vf = r.flatten(), v.flatten()
        s1, n_all = batch_sum(torch.stack([(flat * vf).sum(), vf.sum()]))
        m = s1 / n_all.clamp(min=1)
        s = (batch_sum(((flat - m) ** 2 * vf).sum().reshape(1))[0] / (n_all - 1).clamp(min=1)).sqrt()
        adv = adv / (s + STD_EPS)
    usable = (v > 0) & (n >= 2)
    zero_std = (n.squeeze(1) >= 2) & torch.isclose(std.squeeze(1), torch.zeros_like(std.squeeze(1)))
    return (adv * usable).flatten().to(rewards.dtype), usable.flatten(), zero_std


# ---------------------------------------------------------------- the per-token loss


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL_t = exp(ref − logp) − (ref − logp) − 1, per token."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def per_token_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, epsilon: float,
                   epsilon_high: float | None = None, beta: float = 0.0, ref_logp: torch.Tensor | None = None,
                   kl_times_ratio: bool = False):
    """ℓ_t (B, T) and its parts: (loss, ratio, clipped-token flags, kl or None). `advantages`: (B,)."""
    ratio = torch.exp(logp - old_logp)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + (epsilon_high if epsilon_high is not None else epsilon))
    a = advantages.unsqueeze(1)
    loss = -torch.min(ratio * a, clipped * a)
    is_clipped = (ratio * a) > (clipped * a)
    kl = None
    if beta:
        kl = k3_kl(logp, ref_logp)
        loss = loss + beta * (kl * ratio if kl_times_ratio else kl)
    return loss, ratio, is_clipped, kl


def token_weights(mask: torch.Tensor, loss_type: str, max_new_tokens: int, n_seqs: float | None = None,
                  n_tokens: float | None = None) -> torch.Tensor:
    """Weights w (B, T) with loss = Σ w·ℓ, for `loss_type`. `n_seqs`/`n_tokens`: the counts over the
    whole optimisation batch (all processes) when `mask` is a part of it; default this mask's."""
    mask = mask.float()
    n_seqs = float(mask.shape[0]) if n_seqs is None else n_seqs
    if loss_type == "grpo":
        return mask / mask.sum(1, keepdim=True).clamp(min=1) / max(n_seqs, 1.0)
    if loss_type == "bnpo":
        return mask / max(float(mask.sum()) if n_tokens is None else n_tokens, 1.0)
    if loss_type == "dr_grpo":
        return mask / (max(n_seqs, 1.0) * max_new_tokens)
    raise ValueError(f"loss_type {loss_type!r}: expected grpo, bnpo or dr_grpo")


def grpo_loss(logp, old_logp, advantages, mask, cfg: GRPOConfig, ref_logp=None, weights=None):
    """The aggregated loss of a batch (or, with `weights` from the whole batch, its share) and stats."""
    loss_t, ratio, is_clipped, kl = per_token_loss(logp, old_logp, advantages, cfg.epsilon, cfg.epsilon_high,
                                                   cfg.beta, ref_logp, cfg.use_bias_correction_kl)
    w = token_weights(mask, cfg.loss_type, cfg.max_new_tokens) if weights is None else weights
    loss = (loss_t * w).sum()
    m = mask.float()
    n = m.sum().clamp(min=1)
    stats = {"clip_ratio": ((is_clipped.float() * m).sum() / n).detach(),
             "kl": ((kl * m).sum() / n).detach() if kl is not None else torch.zeros(()),
             "ratio": ((ratio * m).sum() / n).detach()}
    return loss, stats

