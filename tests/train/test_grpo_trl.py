"""Our GRPO maths against TRL's GRPOTrainer (trl/trainer/grpo_trainer.py) on the same batch.

TRL samples and scores a batch with a callable reward on a tiny random-weight model on CPU
(`_generate_and_score_completions`); on that batch — its prompt and completion ids and masks, the
old log-probs replaced by perturbed ones so the clip is exercised, its reference log-probs — we
compare per-token log-probs, advantages, the loss for every aggregation and its gradient (the
reference log-probs perturbed too, so β's k3 term counts). The
prompts all have the same length: TRL's scoring forward passes no position ids, ours passes the
left-padding-aware ones `generate` samples with, so on padded prompts the two differ by design.

Tolerances, measured with `pytest tests/train/test_grpo_trl.py -rP` (the test prints the differences):
max |Δ log-prob| 4.8e-7, max |Δ advantage| 1.2e-7, loss ≤ 5.2e-7 relative and gradient ≤ 6.7e-8
absolute (max over parameters) for every loss type, β = 0 and 0.04, with and without TRL's
KL·ρ correction: float32 rounding. The asserts allow 1e-5.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from train_fixtures import save_tiny, tiny_tokenizer

pytest.importorskip("trl")
pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5
G, NEW = 4, 8


def letters(texts):
    """Share of letters in the reply (a random-weight model writes few vowels, so not those)."""
    return [sum(ch.isalpha() for ch in t) / max(len(t), 1) for t in texts]


def trl_letters(prompts, completions, **kw):
    return letters([c[0]["content"] if isinstance(c, list) else c for c in completions])


@pytest.fixture(scope="module")
def trl_batch(one_thread, tmp_path_factory):
    from datasets import Dataset
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    d = save_tiny(tmp_path_factory.mktemp("trl") / "model", seed=3)
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": f"say {w}"}]} for w in ("hi", "yo")])
    args = TRLConfig(output_dir=str(tmp_path_factory.mktemp("trl-out")), per_device_train_batch_size=2 * G,
                     num_generations=G, max_completion_length=NEW, beta=0.04, loss_type="grpo",
                     scale_rewards="group", num_iterations=2, epsilon=0.2, temperature=0.9, use_cpu=True,
                     report_to=[], bf16=False, seed=0)
    tok = tiny_tokenizer()
    trainer = GRPOTrainer(model=str(d), reward_funcs=trl_letters, args=args, train_dataset=ds, processing_class=tok)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    batch = trainer._generate_and_score_completions([ds[0]] * G + [ds[1]] * G)
    g = torch.Generator().manual_seed(1)
    batch["old_per_token_logps"] = batch["old_per_token_logps"] + 0.3 * torch.randn(
        batch["old_per_token_logps"].shape, generator=g)
    # the reference equals the policy at step 1 (KL = 0): move it too, so β's term is compared
    batch["ref_per_token_logps"] = batch["ref_per_token_logps"] + 0.2 * torch.randn(
        batch["ref_per_token_logps"].shape, generator=g)
    return trainer, batch, tok


def ours_logps(trainer, batch, temperature):
    from rlaif.tensors import positions
    from rlaif.train.rollouts import response_logps

    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    logits = trainer.model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), use_cache=False).logits
    return response_logps(logits, batch["completion_ids"], batch["prompt_ids"].shape[1], temperature)[0]


def test_log_probs_and_advantages_equal_trl(trl_batch):
    from rlaif.train.grpo import group_advantages
    from rlaif.train.rollouts import response_mask

    trainer, batch, tok = trl_batch
    assert batch["prompt_mask"].all()  # equal-length prompts: no padding (see the docstring)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    am = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad():
        theirs = trainer._get_per_token_logps_and_entropies(trainer.model, ids, am, NEW)[0]
        ours = ours_logps(trainer, batch, 0.9)
    m = batch["completion_mask"].bool()
    d_logp = (theirs - ours)[m].abs().max().item()
    mine, _ = response_mask(batch["completion_ids"], tok.eos_token_id)
    assert torch.equal(mine.bool(), m)  # the same mask: up to and including the first EOS
    rewards = torch.tensor(trl_letters(None, tok.batch_decode(batch["completion_ids"], skip_special_tokens=True)))
    adv, _, _ = group_advantages(rewards, torch.ones(len(rewards), dtype=torch.bool), G, "grpo", "group")
    d_adv = (adv - batch["advantages"]).abs().max().item()
    print(f"max |Δ log-prob| {d_logp:.2e}, max |Δ advantage| {d_adv:.2e}")
    assert adv.abs().sum() > 0 and d_logp <= TOL and d_adv <= TOL


@pytest.mark.parametrize("theirs, ours, beta, corrected", [
    ("grpo", "grpo", 0.04, False), ("bnpo", "bnpo", 0.04, False), ("dr_grpo", "dr_grpo", 0.04, False),
    ("dapo", "bnpo", 0.04, False), ("grpo", "grpo", 0.0, False), ("grpo", "grpo", 0.04, True),
    ("dr_grpo", "dr_grpo", 0.04, True)])
def test_loss_and_gradient_equal_trl(trl_batch, theirs, ours, beta, corrected):
    from rlaif.train.grpo import GRPOConfig, grpo_loss

    trainer, batch, _ = trl_batch
    trainer.loss_type, trainer.beta = theirs, beta
    trainer.args.use_bias_correction_kl = corrected  # TRL's default is True (KL_t · ρ_t)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.model.zero_grad()
    loss_t = trainer._compute_loss(trainer.model, batch)
    loss_t.backward()
    grads_t = [p.grad.clone() for p in params]
    trainer.model.zero_grad()
    cfg = GRPOConfig(rewards=[], loss_type=ours, beta=beta, epsilon=0.2, max_new_tokens=NEW, temperature=0.9,
                     use_bias_correction_kl=corrected)
    logp = ours_logps(trainer, batch, 0.9)
    loss_o, stats = grpo_loss(logp, batch["old_per_token_logps"], batch["advantages"], batch["completion_mask"], cfg,
                              batch.get("ref_per_token_logps") if beta else None)
    loss_o.backward()
    d_loss = abs(loss_o.item() - loss_t.item()) / max(abs(loss_t.item()), 1e-8)
    d_grad = max((p.grad - g).abs().max().item() for p, g in zip(params, grads_t))
    trainer.model.zero_grad()
    print(f"{theirs} vs ours {ours}, β={beta}, KL·ρ {corrected}: loss {loss_t.item():.6f} vs {loss_o.item():.6f} "
          f"(relative {d_loss:.2e}), max |Δ grad| {d_grad:.2e}, clip ratio {stats['clip_ratio']:.3f}")
    assert stats["clip_ratio"] > 0  # the perturbed old log-probs make the clip bite
    assert d_loss <= TOL and d_grad <= TOL
