"""The training maths: soft-label Bradley–Terry, soft DPO/IPO, GAE, PPO clipping — and equality
with TRL's DPO and reward trainers on the same batch and weights."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from train_fixtures import tiny_llama, tiny_tokenizer, toy_prefs

from rlaif.train.encoding import encode  # noqa: E402
from rlaif.train.examples import parse_pair  # noqa: E402
from rlaif.train.maths import sequence_logps  # noqa: E402
from rlaif.train.dpo import DPOBatches, concatenated_logps, dpo_loss  # noqa: E402
from rlaif.train.ppo import compute_gae, kl_shaped_rewards, ppo_losses  # noqa: E402
from rlaif.train.rollouts import response_mask  # noqa: E402
from rlaif.train.reward_model import PairBatches, soft_bt_loss  # noqa: E402
from rlaif.train.maths import pair_accuracy  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# ---------------------------------------------------------------- soft-label Bradley–Terry


def test_soft_bt_at_p1_is_plain_bradley_terry():
    d = torch.linspace(-4, 4, 17)
    r_r = torch.randn(17)
    assert torch.allclose(soft_bt_loss(r_r + d, r_r, 1.0), -F.logsigmoid(d), atol=1e-6)
    assert torch.allclose(soft_bt_loss(r_r + d, r_r, 0.0), -F.logsigmoid(-d), atol=1e-6)
    # with a margin, p = 1 is TRL's -log σ(r_c − r_r − m)
    assert torch.allclose(soft_bt_loss(r_r + d, r_r, 1.0, 0.5), -F.logsigmoid(d - 0.5), atol=1e-6)


def test_soft_bt_p_half_has_zero_gradient_on_equal_rewards_and_pulls_to_zero():
    for p, sign in ((0.5, 0), (0.8, -1), (0.2, 1)):
        d = torch.zeros(1, requires_grad=True)
        soft_bt_loss(d, torch.zeros(1), p).sum().backward()
        assert torch.sign(d.grad).item() == sign  # p=.5: exactly zero; else pushes towards the label
    # the minimiser of the soft loss over the reward gap is logit(p): p = 0.5 -> gap 0
    for p in (0.5, 0.7, 0.9):
        d = torch.zeros(1, requires_grad=True)
        opt = torch.optim.LBFGS([d], lr=1, max_iter=100)

        def closure():
            opt.zero_grad()
            loss = soft_bt_loss(d, torch.zeros(1), p).sum()
            loss.backward()
            return loss

        opt.step(closure)
        assert d.item() == pytest.approx(torch.logit(torch.tensor(p)).item(), abs=1e-4)
    # p = 0.5: loss is even in the gap, so the gradient at ±d cancels
    d = torch.tensor([1.3, -1.3], requires_grad=True)
    soft_bt_loss(d, torch.zeros(2), 0.5).sum().backward()
    assert d.grad.sum().abs().item() < 1e-7


def test_pair_accuracy_ties_and_soft_sides():
    acc = pair_accuracy(torch.tensor([1.0, 0.0, 2.0, 1.0]), torch.tensor([0.0, 1.0, 2.0, 0.0]),
                        torch.tensor([0.9, 0.9, 0.9, 0.2]))
    assert acc.tolist() == [1.0, 0.0, 0.5, 0.0]


# ---------------------------------------------------------------- DPO / IPO


def test_soft_dpo_reduces_to_hard_and_to_cdpo():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, generator=g) * 3 for _ in range(4))
    h = (pc - rc) - (pr - rr)
    hard, _, _ = dpo_loss(pc, pr, rc, rr, 0.2, "sigmoid", 1.0)
    assert torch.allclose(hard, -F.logsigmoid(0.2 * h), atol=1e-6)
    soft, _, _ = dpo_loss(pc, pr, rc, rr, 0.2, "sigmoid", 0.7)  # = label smoothing 0.3 (cDPO)
    assert torch.allclose(soft, -0.7 * F.logsigmoid(0.2 * h) - 0.3 * F.logsigmoid(-0.2 * h), atol=1e-6)
    ipo1, _, _ = dpo_loss(pc, pr, rc, rr, 0.2, "ipo", 1.0)
    assert torch.allclose(ipo1, (h - 1 / (2 * 0.2)) ** 2, atol=1e-5)
    ipo_half, _, _ = dpo_loss(pc, pr, rc, rr, 0.2, "ipo", 0.5)
    assert torch.allclose(ipo_half, h ** 2, atol=1e-5)


def test_soft_ipo_target_is_the_expected_two_order_regression():
    """(h − (2p−1)/(2β))² has the same minimiser in h as p·(h − 1/β)² + (1−p)·h² over both orders —
    IPO's squared regression on the Bernoulli(p) preference indicator."""
    beta = 0.25
    for p in (0.0, 0.3, 0.5, 0.8, 1.0):
        hs = torch.linspace(-6, 6, 24001)
        expected = p * ((hs - 1 / beta) ** 2 + hs ** 2) + (1 - p) * (hs ** 2 + (hs + 1 / beta) ** 2)
        ours, _, _ = dpo_loss(hs, torch.zeros_like(hs), torch.zeros_like(hs), torch.zeros_like(hs), beta, "ipo", p)
        assert hs[expected.argmin()].item() == pytest.approx(hs[ours.argmin()].item(), abs=1e-3)
        assert hs[ours.argmin()].item() == pytest.approx((2 * p - 1) / (2 * beta), abs=1e-3)


def test_prompt_tokens_are_masked_and_completion_ends_with_the_template():
    tok = tiny_tokenizer()
    pair = parse_pair(toy_prefs(1)[0], "x")
    ids, mask = encode(tok, pair.prompt, pair.chosen, 512)
    text = tok.decode(ids)
    prompt_text = tok.decode([t for t, m in zip(ids, mask) if not m])
    completion = tok.decode([t for t, m in zip(ids, mask) if m])
    assert prompt_text.endswith("<|im_start|>assistant\n") and "tell me about cats" in prompt_text
    assert completion == "yes, gladly: cats are nice.<|im_end|>\n"
    assert text == tok.apply_chat_template(pair.prompt + pair.chosen, tokenize=False)
    # truncation keeps the end of the prompt and the start of the completion
    ids2, mask2 = encode(tok, pair.prompt, pair.chosen, 40)
    assert len(ids2) == 40 and mask2[0] == 0 and mask2[-1] == 1
    assert tok.decode([t for t, m in zip(ids2, mask2) if not m]).endswith("assistant\n")


def test_plain_string_and_implicit_prompt_records():
    tok = tiny_tokenizer()
    plain = parse_pair({"prompt": "q: hi\na:", "chosen": " yes", "rejected": " no", "p_chosen": 0.8}, "x")
    assert not plain.conversational and plain.p == 0.8
    ids, mask = encode(tok, plain.prompt, plain.chosen, 64)
    assert tok.decode([t for t, m in zip(ids, mask) if m]) == " yes<|im_end|>"
    hh = parse_pair({"chosen": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                     "rejected": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "go"}]}, "x")
    assert hh.prompt == [{"role": "user", "content": "hi"}] and hh.chosen[0]["content"] == "hello"
    from rlaif.errors import UserError

    with pytest.raises(UserError, match=r"f\.jsonl:3: field 'p_chosen'"):
        parse_pair({"prompt": "a", "chosen": "b", "rejected": "c", "p_chosen": 1.5}, "f.jsonl:3")
    with pytest.raises(UserError, match="missing field 'rejected'"):
        parse_pair({"prompt": "a", "chosen": "b"}, "f.jsonl:1")


# ---------------------------------------------------------------- PPO pieces


def test_gae_matches_a_direct_computation():
    g = torch.Generator().manual_seed(1)
    rewards, values = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float)
    gamma, lam = 0.9, 0.8
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    for b in range(3):
        n = int(mask[b].sum())
        for t in range(n):
            expected = sum((gamma * lam) ** (k - t) * (rewards[b, k] + gamma * (values[b, k + 1] if k + 1 < n else 0)
                                                       - values[b, k]) for k in range(t, n))
            assert adv[b, t].item() == pytest.approx(expected.item(), abs=1e-5)
        assert adv[b, n:].abs().sum() == 0
    assert torch.allclose(ret, (adv + values) * mask)
    # γ = λ = 1: the advantage is the undiscounted return-to-go minus the value
    adv1, _ = compute_gae(rewards, values, mask, 1.0, 1.0)
    togo = torch.flip(torch.cumsum(torch.flip(rewards * mask, [1]), 1), [1])
    assert torch.allclose(adv1, (togo - values) * mask, atol=1e-5)


def test_kl_shaped_rewards_put_the_score_on_the_last_token():
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = torch.tensor([[-1.5, -2.0, -2.0], [-1.0, -2.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = kl_shaped_rewards(torch.tensor([2.0, 5.0]), logp, ref, mask, beta=0.1)
    assert torch.allclose(kl, torch.tensor([[0.5, 0.0, -1.0], [0.0, 1.0, 0.0]]))
    assert torch.allclose(rewards, torch.tensor([[-0.05, 0.0, 2.1], [0.0, 4.9, 0.0]]))


def test_response_mask_stops_after_the_first_eos():
    m, has = response_mask(torch.tensor([[5, 3, 2, 3], [5, 5, 5, 5]]), eos_id=3)
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]] and has.tolist() == [True, False]


def test_ppo_losses_clip_both_ways():
    old = torch.zeros(1, 4)
    logp = torch.tensor([[0.5, -0.5, 0.05, 0.0]])  # ratios e^.5, e^-.5, e^.05, 1
    adv = torch.tensor([[1.0, -1.0, 1.0, 1.0]])
    mask = torch.ones(1, 4)
    pg, vf, s = ppo_losses(logp, old, torch.zeros(1, 4), torch.zeros(1, 4), adv, torch.ones(1, 4), mask, 0.2, 0.2)
    expected = torch.tensor([-1.2, 0.8, -torch.exp(torch.tensor(0.05)).item(), -1.0]).mean()
    assert pg.item() == pytest.approx(expected.item(), abs=1e-6)
    assert s["clipfrac"].item() == pytest.approx(0.5)
    assert vf.item() == pytest.approx(0.5)


# ---------------------------------------------------------------- equality with TRL


@pytest.fixture(scope="module")
def trl_models():
    pytest.importorskip("trl")
    tok = tiny_tokenizer()
    yield tok, tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)
    # TRL's TrainingArguments leave a process-wide AcceleratorState behind (with their precision
    # settings); drop it so later trainers in this process start from a clean state
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def _rows():
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in toy_prefs(4)]


@pytest.mark.parametrize("loss_type,beta", [("sigmoid", 0.3), ("ipo", 0.5)])
def test_dpo_loss_equals_trl(trl_models, loss_type, beta, tmp_path):
    from datasets import Dataset
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    tok, policy, ref = trl_models
    args = TRLDPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, beta=beta,
                        loss_type=[loss_type], report_to=[], use_cpu=True, max_length=None,
                        bf16=False)
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(_rows()),
                         processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    batch = {k: v.cpu() for k, v in batch.items()}
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, batch).item()

    # same tokenisation: every TRL row is one of ours (TRL shuffles the order)
    ours_batch = DPOBatches(tok, [parse_pair(r, "x") for r in toy_prefs(4)], 512)(list(range(4)))
    def rows(b):
        return sorted((tuple(i[m.bool()].tolist()), tuple(c[m.bool()].tolist()))
                      for i, c, m in zip(b["input_ids"], b["completion_mask"], b["attention_mask"]))
    assert rows(ours_batch) == rows(batch)

    with torch.no_grad():
        ref_c, ref_r = concatenated_logps(ref, batch, average=loss_type == "ipo")
    pol_c, pol_r = concatenated_logps(policy, batch, average=loss_type == "ipo")
    ours = dpo_loss(pol_c, pol_r, ref_c, ref_r, beta, loss_type, 1.0)[0].mean().item()
    assert abs(ours - theirs) <= 1e-5 * max(1.0, abs(theirs)), (ours, theirs)
    assert abs(ours - dpo_loss(ref_c, ref_r, ref_c, ref_r, beta, loss_type, 1.0)[0].mean().item()) > 1e-3


@pytest.mark.parametrize("with_margin", [False, True])
def test_reward_loss_with_hard_labels_equals_trl(trl_models, with_margin, tmp_path):
    from datasets import Dataset
    from transformers import LlamaForSequenceClassification
    from trl import RewardConfig as TRLRewardConfig
    from trl import RewardTrainer

    tok, policy, _ = trl_models
    torch.manual_seed(3)
    cfg = policy.config.__class__(**{**policy.config.to_dict(), "num_labels": 1})
    model = LlamaForSequenceClassification(cfg)
    model.config.pad_token_id = tok.pad_token_id
    rows = _rows()
    if with_margin:
        for i, r in enumerate(rows):
            r["margin"] = 0.25 * i
    args = TRLRewardConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, report_to=[],
                           use_cpu=True, max_length=None, bf16=False)
    trainer = RewardTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = {k: v.cpu() for k, v in next(iter(trainer.get_train_dataloader())).items()}
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, dict(batch)).item()

    r = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
    r_c, r_r = r.chunk(2)
    margin = batch["margin"] if with_margin else 0.0
    ours = soft_bt_loss(r_c, r_r, torch.ones_like(r_c), margin).mean().item()
    assert abs(ours - theirs) <= 1e-5, (ours, theirs)

    # and our own batches tokenise the pairs exactly as TRL does
    ours_batch = PairBatches(tok, [parse_pair(x, "x") for x in rows], 512)(list(range(4)))
    def seqs(b):
        return sorted(tuple(i[m.bool()].tolist()) for i, m in zip(b["input_ids"], b["attention_mask"]))
    assert seqs(ours_batch) == seqs(batch)


def test_sequence_logps_sum_and_mean():
    logits = torch.randn(2, 4, 7)
    ids = torch.randint(0, 7, (2, 4))
    mask = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    lp = logits.log_softmax(-1)
    expected = torch.stack([lp[0, 1, ids[0, 2]] + lp[0, 2, ids[0, 3]], lp[1, 0, ids[1, 1]] + lp[1, 1, ids[1, 2]]])
    assert torch.allclose(sequence_logps(logits, ids, mask), expected, atol=1e-6)
    assert torch.allclose(sequence_logps(logits, ids, mask, average=True), expected / 2, atol=1e-6)
