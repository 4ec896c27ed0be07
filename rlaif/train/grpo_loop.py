"""The GRPO / RLOO training loop (the maths is rlaif/train/grpo.py).

One step:
1. take `batch_size` prompts (global; split over processes) and repeat each G times;
2. sample the G·B replies from the policy (parameters gathered once under FSDP / ZeRO-3);
3. score them: R = Σ_k w_k R_k (rlaif/train/rewards.py); a reply whose reward failed is kept out
   of the loss and of its group's baseline, counted (`reward_failed`) and written, with the
   reason, to `reward_failures.jsonl`;
4. advantages per group; old log-probs from a no-grad pass when μ > 1; the reference's when β > 0;
5. μ optimizer steps over the batch, each accumulated over `grad_accum` micro-batches, the loss
   normalised over the whole batch (all processes) so the micro-batch split does not change it.

Logged per step (`train_log.jsonl`): reward and its std, each reward's mean and std
(`rewards/NAME/mean`, `rewards/NAME/std`), `reward_failed`, `frac_reward_zero_std` (groups whose
replies all scored the same: no signal), KL (β > 0), clip ratio, entropy, reply length, EOS rate,
`sampled_tokens` (cumulative), the seconds spent scoring (`reward_seconds`) and step time.
"""

from __future__ import annotations

import json
import sys
from functools import partial
import time

import torch

from rlaif.errors import UserError
from rlaif.judge import Judge, JudgeConfig
from rlaif.train.distributed import gathered_for_generation, prepare_frozen, unsharded_loading
from rlaif.train.examples import pad_id, read_prompts
from rlaif.train.grpo import GRPOConfig, group_advantages, grpo_loss, token_weights
from rlaif.train.maths import entropy_from_logits, masked_mean
from rlaif.train.models import load_policy, resolve
from rlaif.train.rewards import Component, RewardSet, build_rewards
from rlaif.train.rollouts import PromptBatches, decode, joined, response_logps, response_mask
from rlaif.train.run_log import directed_share, gather_mean
from rlaif.train.trainer import Run, example_stream, run_main

JUDGE_KINDS = ("judge_direct", "judge_pairwise")


class RowSampler:
    """Sampling from softmax(logits / T) with each row's own random stream, as a logits processor
    under greedy decoding (Gumbel-max: argmax(logits/T + g), g = −log(−log u), u ~ U(0, 1), draws
    a token with exactly the softmax's probabilities). Row i's draws come from a generator seeded
    with `seeds[i]` alone, so a reply does not depend on which other rows share its batch: the same
    global batch gives the same replies on one process or split over several (torch's batched
    sampler consumes one stream across the rows, so there a row's draw depends on the rows before it)."""

    def __init__(self, seeds, temperature: float, device):
        self.temperature = temperature
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids, scores):
        V = scores.shape[-1]
        u = torch.stack([torch.rand(V, generator=g, device=scores.device, dtype=torch.float32)
                         for g in self.generators])
        u = u.clamp(min=torch.finfo(torch.float32).tiny, max=1 - torch.finfo(torch.float32).eps)
        return scores.float() / self.temperature - torch.log(-torch.log(u))


def rollout_kwargs() -> dict:
    """What `generate` gets besides the inputs: a model's generation_config is neutralised (its
    repetition penalty, min_p, no_repeat_ngram_size, suppressed tokens… would make the replies other
    than draws from softmax(logits/T), and ratios and KL biased), as the transformers engine does for
    pure sampling; top-k and top-p off. Sampling itself is `RowSampler`'s, on top of greedy decoding."""
    from rlaif.backends.transformers_engine import pure_sampling_kwargs

    return dict(pure_sampling_kwargs(), do_sample=False, temperature=None, top_k=None, top_p=None)


@torch.no_grad()
def sample(lm, input_ids, attention_mask, tokenizer, cfg: GRPOConfig, seed: int | None = None,
           greedy: bool = False, row_seeds=None, **kw):
    """Replies to left-padded prompts (token ids after the prompt): greedy, or sampled at
    `cfg.temperature` with row i's draws seeded by `row_seeds[i]` (default: from `seed` and i)."""
    from transformers import LogitsProcessorList

    was = lm.training
    lm.eval()
    args = rollout_kwargs()
    if not greedy:
        if row_seeds is None:
            row_seeds = [(seed or 0) * 1_000_003 + i for i in range(len(input_ids))]
        args["logits_processor"] = LogitsProcessorList([RowSampler(row_seeds, cfg.temperature, input_ids.device)])
    out = lm.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=cfg.max_new_tokens,
                      pad_token_id=pad_id(tokenizer), eos_token_id=tokenizer.eos_token_id, **args, **kw)
    lm.train(was)
    return out[:, input_ids.shape[1]:]


def row_seeds(seed: int, step: int, first_prompt: int, n_prompts: int, G: int) -> list[int]:
    """The seeds of a process's replies: from the run's seed, the step, and each reply's place in the
    global batch (prompt position × G + j), never the process: the same on any number of processes."""
    return [((seed * 1_000_003 + step) * 1_000_033 + (first_prompt + i) * G + j) & 0x7FFF_FFFF_FFFF_FFFF
            for i in range(n_prompts) for j in range(G)]


def gathered_values(accelerator, values) -> list:
    """Per-reply values (None where missing) of every process, in global batch order."""
    t = torch.tensor([float("nan") if v is None else float(v) for v in values], dtype=torch.float64,
                     device=accelerator.device)
    return [None if x != x else x for x in accelerator.gather(t).tolist()]


def reference_replies(cfg: GRPOConfig, lm, tokenizer, prompts, collate, device) -> dict:
    """record_id(prompt) -> the fixed reply `against: reference` compares with: from the reward's
    `references` file (prompt + response), else the starting policy's greedy reply."""
    from rlaif.prompts_io import as_messages
    from rlaif.records import read_jsonl, record_id

    out: dict = {}
    for s in cfg.rewards:
        if s.kind == "judge_pairwise" and s.against == "reference" and s.references:
            for i, r in enumerate(read_jsonl(s.references), 1):
                if "prompt" not in r or not isinstance(r.get("response"), str):
                    raise UserError(f"{s.references}:{i}: expected fields prompt and response (text)")
                out[record_id(as_messages(r["prompt"], f"{s.references}:{i}"))] = r["response"]
    if out or not any(s.kind == "judge_pairwise" and s.against == "reference" for s in cfg.rewards):
        return out
    lm.to(device)
    for start in range(0, len(prompts), 16):
        b = collate(list(range(start, min(start + 16, len(prompts)))))
        ids, am = b["input_ids"].to(device), b["attention_mask"].to(device)
        resp = sample(lm, ids, am, tokenizer, cfg, greedy=True)
        m, _ = response_mask(resp, tokenizer.eos_token_id)
        for i, text in zip(b["idx"].tolist(), decode(tokenizer, resp, m)):
            out[record_id(as_messages(prompts[i], "prompt"))] = text
    return out


def make_rewards(cfg: GRPOConfig, reward_fn, judge, lm, tokenizer, prompts, collate, device):
    """-> (RewardSet, the judge engine this call loaded or None). `judge`: a Judge, or an engine that
    judges with the default settings (seeded by the run)."""
    if isinstance(reward_fn, RewardSet):
        return reward_fn, None
    if reward_fn is not None:
        return RewardSet([Component("reward", 1.0, reward_fn)]), None
    loaded = None
    if judge is None and any(s.kind in JUDGE_KINDS for s in cfg.rewards):
        from rlaif.backends import load_engine
        from rlaif.config import parse_model_spec

        judge = loaded = load_engine(parse_model_spec(cfg.judge or cfg.policy))
    if judge is not None and not isinstance(judge, Judge):
        judge = Judge(judge, cfg.constitution or "harmless", JudgeConfig(seed=cfg.seed))
    from rlaif.prompts_io import read_prompts as read_prompt_records

    refs = reference_replies(cfg, lm, tokenizer, prompts, collate, device)
    rewards = build_rewards(cfg.rewards, cfg.reward_weights, judge=judge, constitution=cfg.constitution,
                            device=device, batch_size=cfg.reward_batch_size, max_length=cfg.max_length,
                            prompt_records=read_prompt_records(cfg.prompts), references=refs)
    return rewards, loaded


def _mean_std(values) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    t = torch.tensor(v, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(v) > 1 else 0.0


def train_grpo(cfg: GRPOConfig, reward_fn=None, judge=None) -> dict:
    """Train; `reward_fn`: a RewardSet or `f(prompts, responses)` in place of `cfg.rewards`;
    `judge`: the Judge (or judge engine) judge rewards use (default: `cfg.judge` loaded here)."""
    if not cfg.prompts:
        raise UserError("grpo: no prompts; set `prompts` (--prompts FILE)")
    if cfg.gradient_checkpointing:
        raise UserError("grpo: gradient_checkpointing is not supported (the policy generates every step)")
    run = Run.start(cfg, "grpo", cfg.policy, sync_with_dataloader=False)
    accelerator, tokenizer = run.accelerator, run.tokenizer
    n_proc, G = accelerator.num_processes, cfg.num_generations
    local = cfg.batch_size // n_proc * G  # replies per process per step
    if local % cfg.grad_accum:
        raise UserError(f"grad_accum {cfg.grad_accum} must divide the replies per process per step "
                        f"({cfg.batch_size // n_proc} prompts × {G} generations = {local})")
    micro = local // cfg.grad_accum
    prompts = read_prompts(cfg.prompts)

    lm = load_policy(run.path, cfg.dtype)
    collate = PromptBatches(tokenizer, prompts, max(8, cfg.max_length - cfg.max_new_tokens), cfg.system_prompt)
    with unsharded_loading(accelerator):
        rewards, loaded_judge = make_rewards(cfg, reward_fn, judge, lm, tokenizer, prompts, collate, accelerator.device)
    ref = None
    if cfg.beta > 0:  # β = 0: no reference in memory
        ref = load_policy(resolve(cfg.reference) if cfg.reference else run.path, cfg.dtype)
    lm.train()
    steps, order = example_stream(cfg, len(prompts), per_step=cfg.batch_size)
    model, optimizer, loader, scheduler = run.prepare(lm, order, collate, steps * cfg.num_iterations)
    if ref is not None:
        ref = prepare_frozen(accelerator, ref)
    unwrapped = accelerator.unwrap_model(model)

    run.begin(steps, f"grpo ({cfg.advantage})")
    failures_file = open(run.out / "reward_failures.jsonl", "w", encoding="utf-8") if run.main else None
    step, sampled_tokens, failed_total = 0, 0.0, 0
    try:
        for batch in loader:
            step_started = time.time()
            n_local = len(batch["idx"])
            seeds = row_seeds(cfg.seed, step, accelerator.process_index * n_local, n_local, G)
            ids = batch["input_ids"].repeat_interleave(G, 0)
            am = batch["attention_mask"].repeat_interleave(G, 0)
            idx = batch["idx"].repeat_interleave(G, 0).tolist()
            with accelerator.autocast(), gathered_for_generation(accelerator, model) as kw:
                responses = sample(unwrapped, ids, am, tokenizer, cfg, row_seeds=seeds, **kw)
            mask, has_eos = response_mask(responses, tokenizer.eos_token_id)
            texts = decode(tokenizer, responses, mask)
            groups = [k // G for k in range(len(texts))]
            reward_started = time.time()
            totals, per, failures = rewards([prompts[i] for i in idx], texts, groups)
            reward_seconds = time.time() - reward_started
            dev = responses.device
            valid = torch.tensor([t is not None for t in totals], device=dev)
            scores = torch.tensor([t if t is not None else 0.0 for t in totals], device=dev, dtype=torch.float32)
            if cfg.missing_eos_penalty is not None:
                scores = scores - cfg.missing_eos_penalty * (~has_eos).float().to(dev)
            adv, usable, zero_std = group_advantages(scores, valid, G, cfg.advantage, cfg.scaling,
                                                     batch_sum=lambda t: accelerator.reduce(t.clone(), "sum"))

            P = ids.shape[1]
            full, full_mask, pos = joined(ids, am, responses, mask)
            loss_mask = mask.float() * usable.float().unsqueeze(1)
            n_seqs = accelerator.gather(usable.float().sum().reshape(1)).sum().item()
            n_tokens = accelerator.gather(loss_mask.sum().reshape(1)).sum().item()
            weights = token_weights(loss_mask, cfg.loss_type, cfg.max_new_tokens, n_seqs, n_tokens)
            old_logp = ref_logp = None
            with torch.no_grad():
                chunks = [slice(s, s + micro) for s in range(0, local, micro)]
                if cfg.num_iterations > 1:  # π_old: the policy that sampled, before any update of this batch
                    old_logp = torch.cat([response_logps(model(input_ids=full[c], attention_mask=full_mask[c],
                                                               position_ids=pos[c], use_cache=False).logits,
                                                         responses[c], P, cfg.temperature)[0] for c in chunks])
                if ref is not None:
                    with accelerator.autocast():
                        ref_logp = torch.cat([response_logps(ref(input_ids=full[c], attention_mask=full_mask[c],
                                                                 position_ids=pos[c], use_cache=False).logits,
                                                             responses[c], P, cfg.temperature)[0] for c in chunks])

            stats: dict[str, list[torch.Tensor]] = {k: [] for k in ("loss", "clip_ratio", "kl", "entropy")}
            for it in range(cfg.num_iterations):
                for c in chunks:
                    with accelerator.accumulate(model):
                        logits = model(input_ids=full[c], attention_mask=full_mask[c], position_ids=pos[c],
                                       use_cache=False).logits
                        logp, resp_logits = response_logps(logits, responses[c], P, cfg.temperature)
                        old = old_logp[c] if old_logp is not None else logp.detach()
                        loss, s = grpo_loss(logp, old, adv[c], loss_mask[c], cfg,
                                            ref_logp[c] if ref_logp is not None else None, weights[c])
                        # the loss is a share of the whole batch's: undo accelerate's 1/grad_accum and DDP's mean
                        accelerator.backward(loss * cfg.grad_accum * n_proc)
                        if accelerator.sync_gradients and cfg.max_grad_norm:
                            accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        optimizer.step()
                        scheduler.step()  # warmup counts optimizer steps (μ · grad-accumulated passes)
                        optimizer.zero_grad()
                    with torch.no_grad():
                        s["entropy"] = masked_mean(entropy_from_logits(resp_logits), mask[c])
                    s["loss"] = loss.detach()
                    for k in stats:
                        if k != "kl" or it == 0:  # KL of the policy that sampled (before this batch's updates)
                            stats[k].append(s[k].float())
            step += 1
            run.bar.update(1)
            sampled_tokens += accelerator.gather(mask.float().sum().reshape(1)).sum().item()
            n_failed = int(accelerator.gather(torch.tensor([float((~valid).sum())], device=dev)).sum().item())
            failed_total += n_failed
            # every process's replies: the logged reward is the global batch's, as on one process
            mean, std = _mean_std(gathered_values(accelerator, totals))
            # each process's loss is its share of the global batch's (weights normalised over all of
            # them): the batch's loss is their sum
            loss_share = torch.stack(stats["loss"]).sum().reshape(1) / cfg.num_iterations
            row = {"step": step, "reward": mean, "reward_std": std, "reward_failed": n_failed,
                   "frac_reward_zero_std": gather_mean(accelerator, zero_std.float().mean()),
                   "loss": accelerator.gather(loss_share).sum().item(), "lr": scheduler.get_last_lr()[0],
                   **{k: gather_mean(accelerator, torch.stack(stats[k]).mean()) for k in ("clip_ratio", "entropy")},
                   "completion_length": gather_mean(accelerator, mask.float().sum(1).mean()),
                   "eos_rate": gather_mean(accelerator, has_eos.float().mean()),
                   # the reward-hacking canary: replies carrying text addressed to the judge
                   "judge_directed_rate": gather_mean(accelerator, directed_share(texts, dev)),
                   "sampled_tokens": sampled_tokens, "reward_seconds": reward_seconds,
                   "step_seconds": time.time() - step_started}
            if cfg.beta > 0:
                row["kl"] = gather_mean(accelerator, torch.stack(stats["kl"]).mean())
            for name, values in per.items():
                row[f"rewards/{name}/mean"], row[f"rewards/{name}/std"] = _mean_std(gathered_values(accelerator, values))
            if step in (1, steps):
                row["sample"] = texts[0][:200]
            if failures_file is not None:
                for f in failures:
                    failures_file.write(json.dumps({"step": step, "prompt": idx[f["reply"]], **f}) + "\n")
                failures_file.flush()
            if step % cfg.log_every == 0 or step == steps:
                run.log.log(row)
            run.bar.set_postfix(reward=f"{mean if mean is not None else float('nan'):.3f}", failed=n_failed)
    finally:
        run.bar.close()
        if failures_file is not None:
            failures_file.close()
        if loaded_judge is not None:
            loaded_judge.close()
    components = [f"rewards/{c.name}/mean" for c in rewards.components]
    result = {"prompts": len(prompts), "num_generations": G, "advantage": cfg.advantage,
              "loss_type": cfg.loss_type, "beta": cfg.beta, "reward_failed": failed_total,
              "sampled_tokens": sampled_tokens, "rewards": {c.name: c.weight for c in rewards.components}}
    return run.finish(model, step, result, ["reward", "kl", "entropy", "clip_ratio", "completion_length",
                                            "frac_reward_zero_std", *components],
                      ["reward", *components, "completion_length", "frac_reward_zero_std"]
                      + (["kl"] if cfg.beta > 0 else []))


# `python -m rlaif.train.grpo_loop CONFIG.yaml [--set key=value ...]`, also under `accelerate launch -m`.
main = partial(run_main, GRPOConfig, train_grpo, "grpo_loop")


if __name__ == "__main__":
    sys.exit(main())
