"""PPO with a per-token KL penalty to a frozen reference (RLHF/RLAIF, Ziegler et al. 2019; Ouyang
et al. 2022), with the sequence reward `R` from a reward model (`rm:DIR`, distilled RLAIF) or straight
from the AI labeler (`labeler:direct`, direct RLAIF), from helpful + harmless RMs combined the Llama 2
way (`combined:FILE`, rlaif/train/reward_combine.py) or a conservative RM ensemble (`ensemble:...`,
rlaif/train/reward_ensemble.py) — or any `reward_fn(prompts, responses)`.

One PPO step:
1. rollouts: sample a response for each prompt of the batch from the policy (temperature `T`);
2. score: `R = reward_fn(prompt_messages, response_texts)`;
3. per-token rewards  r_t = −β·KL_t  (+ R at the last response token), with
   KL_t = log π_old(y_t) − log π_ref(y_t)  (the k1 estimator, summed over a response it is the
   sampled KL(π‖π_ref));
4. GAE:  δ_t = r_t + γ V(t+1) − V(t),  A_t = δ_t + γλ A_{t+1},  returns = A + V;  A whitened
   with the mean and variance over every response token of the global batch (all processes'
   shares gathered; TRL whitens per process);
5. `ppo_epochs` passes over the rollouts in minibatches: clipped policy loss
   max(−A·ρ, −A·clip(ρ, 1 ± ε)) with ρ = π/π_old, clipped value loss
   ½·max((V − ret)², (V_old + clip(V − V_old, ±ε_v) − ret)²), total  pg + c_v·vf.

The value head is a linear layer on the policy's last hidden state (shared backbone). Log-probs use
the sampling temperature (logits / T) so ρ is the ratio of the distributions actually sampled from.
Dropout is off in policy and reference (as TRL does), and sampling, the old-log-prob pass and the
reference pass run in the same precision context (accelerate's autocast under mixed precision), so at
step 0 ρ = 1 and KL = 0 exactly. A PPO step is one rollout batch of `batch_size` prompts; each
minibatch of `mini_batch_size` rollouts is one optimizer step, taken over `grad_accum` micro-batches.
Per step it logs reward, KL, entropy, clip fraction, value loss (and more) to `train_log.jsonl` and
draws `reward_vs_kl.png`.

Run: `rlaif ppo --prompts FILE --policy SPEC --reward rm:DIR|labeler:direct --out DIR`, or
`accelerate launch -m rlaif.train.ppo CONFIG.yaml`.
"""

from __future__ import annotations

import sys
from functools import partial
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn as nn
from pydantic import Field

from rlaif.config import DEFAULT_MODEL
from rlaif.errors import UserError
from rlaif.train.config import TrainConfig
from rlaif.train.distributed import gathered_for_generation, prepare_frozen, unsharded_loading
from rlaif.train.examples import Messages, pad_id, read_prompts
from rlaif.train.maths import entropy_from_logits, masked_mean, masked_whiten
from rlaif.train.models import load_policy
from rlaif.train.rollouts import PromptBatches, decode, joined, response_logps, response_mask
from rlaif.train.run_log import directed_share, gather_mean
from rlaif.train.trainer import Run, example_stream, run_main

RewardFn = Callable[[Sequence[Messages | str], Sequence[str]], Sequence[float]]


class PPOConfig(TrainConfig):
    policy: str = Field(DEFAULT_MODEL, description="starting policy and frozen reference")
    prompts: str | None = Field(None, description="prompt JSONL (`prompt`: messages or string)")
    reward: str | None = Field(
        None, description="\"rm:DIR\" | \"labeler:direct\" | \"combined:FILE\" | \"ensemble:...\" (or pass "
                          "reward_fn)")
    judge: str | None = Field(
        None, description="the judge's model spec for labeler:direct (default: the policy's spec)")
    constitution: str | None = Field(None, description="for labeler:direct (default: the labeler's own default)")
    batch_size: int = Field(8, ge=1, description="prompts per PPO step (global)")
    mini_batch_size: int = Field(4, ge=1, description="rollouts per optimizer step (global)")
    ppo_epochs: int = Field(2, ge=1, description="passes over each rollout batch")
    learning_rate: float = Field(3e-6, gt=0, description="peak learning rate of AdamW, reached after warmup_steps")
    max_new_tokens: int = Field(48, ge=1, description="most tokens sampled per reply")
    temperature: float = Field(
        1.0, gt=0, description="sampling temperature of the rollouts (the log-probs are taken at the same "
                               "temperature)")
    kl_coef: float = Field(0.05, ge=0, description="β")
    gamma: float = Field(1.0, ge=0, le=1, description="γ, the discount of GAE")
    lam: float = Field(0.95, ge=0, le=1, description="λ, GAE's bias-variance trade-off")
    cliprange: float = Field(0.2, gt=0, description="ε of the clipped policy objective")
    cliprange_value: float = Field(0.2, gt=0, description="the value head's clip range")
    vf_coef: float = Field(0.1, ge=0, description="weight of the value loss")
    whiten_rewards: bool = Field(
        False, description="scale the per-token rewards by their global-batch std (all processes)")
    missing_eos_penalty: float | None = Field(None, ge=0, description="subtracted from R when no EOS was sampled")
    reward_batch_size: int = Field(16, ge=1, description="replies per reward-model or judge call")


# the logged curves whose first and last values the summary gives, and those train_curves.png draws
CURVES = ("reward", "kl", "entropy", "clipfrac", "value_loss", "response_length")
PLOTTED = ("reward", "kl", "entropy", "clipfrac", "value_loss")


# ---------------------------------------------------------------- model with a value head


class PolicyWithValue(nn.Module):
    """A causal LM plus a scalar value head on its last hidden state."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm
        hidden = lm.config.get_text_config().hidden_size
        self.v_head = nn.Linear(hidden, 1)
        nn.init.zeros_(self.v_head.weight)
        nn.init.zeros_(self.v_head.bias)

    def forward(self, input_ids, attention_mask, position_ids):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                      output_hidden_states=True, use_cache=False)
        values = self.v_head(out.hidden_states[-1].to(self.v_head.weight.dtype)).squeeze(-1)
        return out.logits, values

    # what FSDP2's wrapping looks at: shard the LM's decoder layers and carve its embeddings out
    @property
    def _no_split_modules(self):
        return getattr(self.lm, "_no_split_modules", None)

    def get_input_embeddings(self):
        return self.lm.get_input_embeddings()

    def get_output_embeddings(self):
        return self.lm.get_output_embeddings()


# ---------------------------------------------------------------- advantages


def compute_gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
                lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE over response tokens (mask is a prefix per row). -> (advantages, returns)."""
    rewards, values = rewards * mask, values * mask
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv * mask, (adv + values) * mask


def kl_shaped_rewards(scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor,
                      mask: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """r_t = −β·(log π − log π_ref) per token, plus the sequence score at the last response token."""
    kl = (logp - ref_logp) * mask
    rewards = -beta * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def ppo_losses(logp, old_logp, values, old_values, advantages, returns, mask, cliprange, cliprange_value):
    """Clipped policy and value losses (masked means over response tokens) and their stats."""
    ratio = torch.exp(logp - old_logp)
    pg1 = -advantages * ratio
    pg2 = -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange)
    pg_loss = masked_mean(torch.max(pg1, pg2), mask)
    v_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf1 = (values - returns) ** 2
    vf2 = (v_clipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.max(vf1, vf2), mask)
    stats = {"clipfrac": masked_mean((pg2 > pg1).float(), mask),
             "vf_clipfrac": masked_mean((vf2 > vf1).float(), mask),
             "approx_kl": 0.5 * masked_mean((logp - old_logp) ** 2, mask)}
    return pg_loss, vf_loss, stats


@dataclass
class Rollouts:
    """One rollout batch after scoring: prompt + response token ids (left-padded prompts of length
    `prompt_len`), and per response token the old log-probs and values, advantages, returns and the
    mask (1 up to and including the first EOS)."""

    full: torch.Tensor
    full_mask: torch.Tensor
    pos: torch.Tensor
    responses: torch.Tensor
    prompt_len: int
    old_logp: torch.Tensor
    old_values: torch.Tensor
    advantages: torch.Tensor
    returns: torch.Tensor
    mask: torch.Tensor


def minibatch_loss(model, ro: Rollouts, mb: torch.Tensor, cfg: PPOConfig) -> tuple[torch.Tensor, dict]:
    """pg + c_v·vf on the rollouts `mb` (a fresh forward), and the stats of that forward (detached).
    Only tokens under `ro.mask` count."""
    logits, values = model(ro.full[mb], ro.full_mask[mb], ro.pos[mb])
    logp, resp_logits = response_logps(logits, ro.responses[mb], ro.prompt_len, cfg.temperature)
    vpred = values[:, ro.prompt_len - 1:-1].float()
    mask = ro.mask[mb]
    pg_loss, vf_loss, s = ppo_losses(logp, ro.old_logp[mb], vpred, ro.old_values[mb], ro.advantages[mb],
                                     ro.returns[mb], mask, cfg.cliprange, cfg.cliprange_value)
    with torch.no_grad():
        s["entropy"] = masked_mean(entropy_from_logits(resp_logits), mask)
    stats = {"policy_loss": pg_loss, "value_loss": vf_loss, **s}
    return pg_loss + cfg.vf_coef * vf_loss, {k: v.detach() for k, v in stats.items()}


# ---------------------------------------------------------------- rewards


def make_reward_fn(cfg: PPOConfig, device: str | torch.device = "cpu") -> RewardFn:
    """The reward factory (rm:, labeler:direct, combined:, ensemble:) GRPO shares: rlaif/train/rewards.py."""
    from rlaif.prompts_io import read_prompts as read_prompt_records
    from rlaif.train.rewards import reward_fn_from_spec

    return reward_fn_from_spec(cfg.reward or "", judge=cfg.judge or cfg.policy,
                               constitution=cfg.constitution, device=device,
                               batch_size=cfg.reward_batch_size, max_length=cfg.max_length,
                               prompt_records=read_prompt_records(cfg.prompts) if cfg.prompts else None)



# ---------------------------------------------------------------- rollouts


@torch.no_grad()
def rollout(policy: PolicyWithValue, batch: dict, tokenizer, cfg: PPOConfig, seed: int, **generate_kwargs):
    """Sampled responses; `generate_kwargs` from `gathered_for_generation` (FSDP1: synced_gpus).
    Drawn from softmax(logits/T) itself: the options a model's generation_config may set that change
    the distribution (min_p, no_repeat_ngram_size, suppress_tokens…) are turned off with the
    transformers engine's own `pure_sampling_kwargs`, top-k and top-p too."""
    from rlaif.backends.transformers_engine import pure_sampling_kwargs

    torch.manual_seed(seed)
    was_training = policy.training
    policy.eval()
    out = policy.lm.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                             **pure_sampling_kwargs(), do_sample=True, temperature=cfg.temperature, top_k=0,
                             top_p=1.0, max_new_tokens=cfg.max_new_tokens, pad_token_id=pad_id(tokenizer),
                             eos_token_id=tokenizer.eos_token_id, **generate_kwargs)
    policy.train(was_training)
    return out[:, batch["input_ids"].shape[1]:]


# ---------------------------------------------------------------- training


def train_ppo(cfg: PPOConfig, reward_fn: RewardFn | None = None) -> dict:
    if not cfg.prompts:
        raise UserError("ppo: no prompts; set `prompts` (--prompts FILE)")
    if cfg.gradient_checkpointing:
        raise UserError("ppo: gradient_checkpointing is not supported (the policy generates every step); "
                        "it applies to train-rm and dpo")
    # the rollout loader's last batch must not make every micro-batch an optimizer step
    run = Run.start(cfg, "ppo", cfg.policy, sync_with_dataloader=False)
    accelerator, tokenizer = run.accelerator, run.tokenizer
    n_proc = accelerator.num_processes
    if cfg.mini_batch_size % (n_proc * cfg.grad_accum) or cfg.batch_size % cfg.mini_batch_size:
        raise UserError(f"mini_batch_size {cfg.mini_batch_size} must divide batch_size {cfg.batch_size} "
                        f"and be a multiple of processes × grad_accum ({n_proc} × {cfg.grad_accum})")
    prompts = read_prompts(cfg.prompts)
    if reward_fn is None:
        with unsharded_loading(accelerator):  # reward models run whole on each rank, outside any engine
            reward_fn = make_reward_fn(cfg, accelerator.device)

    lm = load_policy(run.path, cfg.dtype)
    # the frozen reference is loaded on its own (built partitioned under ZeRO-3 like the policy, never
    # a deep copy of a partitioned model) and sharded like the policy once that is prepared
    ref = load_policy(run.path, cfg.dtype)
    policy = PolicyWithValue(lm)
    policy.train()
    steps, order = example_stream(cfg, len(prompts), per_step=cfg.batch_size)  # one rollout batch a step
    collate = PromptBatches(tokenizer, prompts, max(8, cfg.max_length - cfg.max_new_tokens), cfg.system_prompt)
    model, optimizer, loader, scheduler = run.prepare(
        policy, order, collate, steps * cfg.ppo_epochs * (cfg.batch_size // cfg.mini_batch_size))
    ref = prepare_frozen(accelerator, ref)
    unwrapped: PolicyWithValue = accelerator.unwrap_model(model)
    micro = cfg.mini_batch_size // n_proc // cfg.grad_accum  # rollouts per process per forward

    run.begin(steps)
    step = 0
    for batch in loader:
        step_started = time.time()
        seed = cfg.seed * 1_000_003 + step * 1009 + accelerator.process_index
        # sample from the distribution the old log-probs describe, with the policy gathered once
        with accelerator.autocast(), gathered_for_generation(accelerator, model) as generate_kwargs:
            responses = rollout(unwrapped, batch, tokenizer, cfg, seed, **generate_kwargs)
        mask, has_eos = response_mask(responses, tokenizer.eos_token_id)
        texts = decode(tokenizer, responses, mask)
        idx = batch["idx"].tolist()
        scores = torch.tensor([float(s) for s in reward_fn([prompts[i] for i in idx], texts)],
                              device=responses.device)
        if len(scores) != len(texts):
            raise UserError(f"reward function returned {len(scores)} scores for {len(texts)} responses")
        raw_scores = scores.clone()
        if cfg.missing_eos_penalty is not None:
            scores = scores - cfg.missing_eos_penalty * (~has_eos).float().to(scores.device)

        P = batch["input_ids"].shape[1]
        full, full_mask, pos = joined(batch["input_ids"], batch["attention_mask"], responses, mask)
        maskf = mask.float()
        with torch.no_grad():
            logits, values = model(full, full_mask, pos)
            old_logp, _ = response_logps(logits, responses, P, cfg.temperature)
            old_values = values[:, P - 1:-1].float()
            with accelerator.autocast():  # the precision of the policy's (prepared) forward
                ref_logits = ref(input_ids=full, attention_mask=full_mask, position_ids=pos, use_cache=False).logits
            ref_logp, _ = response_logps(ref_logits, responses, P, cfg.temperature)
            del logits, ref_logits
            rewards, kl = kl_shaped_rewards(scores, old_logp, ref_logp, maskf, cfg.kl_coef)
            if cfg.whiten_rewards:
                rewards = masked_whiten(rewards, maskf, shift_mean=False, accelerator=accelerator) * maskf
            advantages, returns = compute_gae(rewards, old_values, maskf, cfg.gamma, cfg.lam)
            advantages = masked_whiten(advantages, maskf, accelerator=accelerator) * maskf
        ro = Rollouts(full, full_mask, pos, responses, P, old_logp, old_values, advantages, returns, maskf)

        stats: dict[str, list[torch.Tensor]] = {k: [] for k in (
            "policy_loss", "value_loss", "clipfrac", "vf_clipfrac", "approx_kl", "entropy")}
        n_local = len(responses)
        g = torch.Generator().manual_seed(seed)
        for _ in range(cfg.ppo_epochs):
            perm = torch.randperm(n_local, generator=g)
            for start in range(0, n_local, micro):
                mb = perm[start:start + micro].to(responses.device)
                with accelerator.accumulate(model):
                    loss, s = minibatch_loss(model, ro, mb, cfg)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                    optimizer.step()
                    scheduler.step()  # warmup counts optimizer steps (one per minibatch, every PPO epoch)
                    optimizer.zero_grad()
                for k in stats:
                    stats[k].append(s[k])
        step += 1
        run.bar.update(1)
        seq_kl = kl.sum(1)
        row = {"step": step,
               "reward": gather_mean(accelerator, raw_scores.mean()),
               "kl": gather_mean(accelerator, seq_kl.mean()),
               "non_score_reward": gather_mean(accelerator, (-cfg.kl_coef * seq_kl).mean()),
               **{k: gather_mean(accelerator, torch.stack(v).mean()) for k, v in stats.items()},
               "response_length": gather_mean(accelerator, maskf.sum(1).mean()),
               "eos_rate": gather_mean(accelerator, has_eos.float().mean()), "lr": scheduler.get_last_lr()[0],
               "judge_directed_rate": gather_mean(accelerator, directed_share(texts, responses.device)),  # the canary
               "step_seconds": time.time() - step_started}
        if step in (1, steps):
            row["sample"] = texts[0][:200]
        if step % cfg.log_every == 0 or step == steps:
            run.log.log(row)
        run.bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}")

    result = run.finish(model, step, {"prompts": len(prompts), "kl_coef": cfg.kl_coef,
                                      "reward": cfg.reward or "callable"}, CURVES, PLOTTED, submodule="lm", extra={"v_head": "value_head.safetensors"})
    if run.main and run.log.rows:
        from rlaif.train.plots import plot_reward_vs_kl

        plot_reward_vs_kl(run.log.rows, run.out / "reward_vs_kl.png", title=f"PPO (β={cfg.kl_coef})")
    return result


# `python -m rlaif.train.ppo CONFIG.yaml [--set key=value ...]`, also under `accelerate launch -m`.
main = partial(run_main, PPOConfig, train_ppo, "ppo")


if __name__ == "__main__":
    sys.exit(main())
