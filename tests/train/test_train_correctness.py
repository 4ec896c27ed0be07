"""What the trainers learn from, and the numbers at step 0 (issue 13, "Training data").

- chosen and rejected are conditioned on the same prompt tokens, whatever their lengths;
- transcripts that differ before their last assistant turn are never trained on (skipped, counted);
- dropout is off in every trainer, so at step 0 policy, reference and old log-probs agree;
- PPO takes one optimizer step per `grad_accum` micro-batches, on the last rollout batch too;
- under bf16 autocast the PPO reference runs in the same precision as the policy (KL 0 at step 0);
- a flipped DPO preference or a prompt-masking bug is visible from the saved model alone.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from train_fixtures import (WORDS, read_log, say_prompts, tiny_llama,
                            tiny_tokenizer, toy_prefs, vowel_reward, write_jsonl)

from rlaif.train.encoding import encode  # noqa: E402
from rlaif.train.examples import parse_pair, read_pairs  # noqa: E402
from rlaif.train.dpo import DPOBatches, DPOConfig, train_dpo  # noqa: E402
from rlaif.train.ppo import PPOConfig, train_ppo  # noqa: E402
from rlaif.train.reward_model import RewardConfig, load_reward_model, train_reward_model  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")



def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}



@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return say_prompts(tmp_path_factory.mktemp("prompts"), WORDS[:4])


# ---------------------------------------------------------------- 1. one prompt window per pair


def test_chosen_and_rejected_see_the_same_prompt_tokens_when_one_side_overflows():
    tok = tiny_tokenizer()
    prompt = [_msg("user", "tell me everything you know about the moon and the tides, please")]
    short, long = [_msg("assistant", "ok")], [_msg("assistant", "the moon pulls the sea " * 6)]
    max_length = 96
    sides = [encode(tok, prompt, c, max_length) for c in (short, long)]
    prompt_ids = [[t for t, m in zip(ids, mask) if not m] for ids, mask in sides]
    assert prompt_ids[0] == prompt_ids[1]
    assert tok.decode(prompt_ids[0]).endswith("<|im_start|>assistant\n")  # the end of the prompt is kept
    assert all(len(ids) <= max_length for ids, _ in sides)
    assert tok.decode([t for t, m in zip(*sides[0]) if m]) == "ok<|im_end|>\n"  # short side whole
    # the same through the DPO batches, and with an explicit prompt budget
    for budget in (None, 40):
        (c_ids, c_mask, r_ids, r_mask, _), = DPOBatches(
            tok, [parse_pair({"prompt": prompt, "chosen": short, "rejected": long}, "x")], max_length,
            max_prompt_length=budget).items
        c_prompt = [t for t, m in zip(c_ids, c_mask) if not m]
        assert c_prompt == [t for t, m in zip(r_ids, r_mask) if not m]
        assert len(c_prompt) == (budget or max_length // 2)


def test_max_prompt_length_must_leave_room_for_the_completion():
    from rlaif.config import validate
    from rlaif.errors import UserError

    with pytest.raises(UserError, match="max_prompt_length 64 must be below max_length 64"):
        validate(DPOConfig, {"max_length": 64, "max_prompt_length": 64}, "cfg.yaml")
    assert validate(RewardConfig, {"max_length": 64, "max_prompt_length": 8}, "cfg.yaml").max_prompt_length == 8


# ---------------------------------------------------------------- 2. no user text as completion


def _diverging_transcripts() -> dict:
    u, a = _msg("user", "hello"), _msg("assistant", "hi, how can i help?")
    return {"chosen": [u, a, _msg("user", "tell me a joke"), _msg("assistant", "why did the owl laugh?")],
            "rejected": [u, a, _msg("user", "go away"), _msg("assistant", "fine.")]}


def test_transcripts_that_differ_before_the_last_assistant_turn_are_skipped_and_counted(tiny_dir, tmp_path):
    same_prefix = {"chosen": [_msg("user", "hi"), _msg("assistant", "hello"), _msg("user", "joke?"),
                              _msg("assistant", "owls are wise")],
                   "rejected": [_msg("user", "hi"), _msg("assistant", "hello"), _msg("user", "joke?"),
                                _msg("assistant", "no")]}
    user_in_completion = {"prompt": [_msg("user", "hi")], "chosen": [_msg("assistant", "hello"), _msg("user", "bye")],
                          "rejected": [_msg("assistant", "go")]}
    ends_with_user = {"chosen": [_msg("user", "hi"), _msg("assistant", "hello"), _msg("user", "ok")],
                      "rejected": [_msg("user", "hi"), _msg("assistant", "hello"), _msg("user", "no")]}
    path = write_jsonl(tmp_path / "prefs.jsonl", toy_prefs(3) + [_diverging_transcripts(), user_in_completion,
                                                                 ends_with_user, same_prefix])
    pairs, skipped = read_pairs(path)
    assert dict(skipped) == {"differ_before_last_assistant_turn": 1, "non_assistant_turn_in_completion": 1,
                             "no_final_assistant_turn": 1} and len(pairs) == 4
    kept = pairs[-1]  # the implicit-prompt pair that differs only in its last reply
    assert kept.prompt == same_prefix["chosen"][:3]
    assert kept.chosen == same_prefix["chosen"][3:] and kept.rejected == same_prefix["rejected"][3:]
    assert all(m["role"] == "assistant" for q in pairs for m in q.chosen + q.rejected)

    # both pair trainers skip it the same way and say so in their summaries
    rm = train_reward_model(RewardConfig(base=str(tiny_dir), prefs=str(path), output_dir=str(tmp_path / "rm"),
                                         batch_size=4, max_steps=1, progress=False, save=False))
    dpo = train_dpo(DPOConfig(policy=str(tiny_dir), prefs=str(path), output_dir=str(tmp_path / "dpo"),
                              batch_size=4, max_steps=1, progress=False, save=False))
    for result in (rm, dpo):
        assert result["train_pairs"] == 4
        assert result["skipped_pairs"] == dict(skipped)


def test_a_file_of_only_unusable_pairs_is_one_clear_error(tmp_path):
    from rlaif.errors import UserError

    path = write_jsonl(tmp_path / "bad.jsonl", [_diverging_transcripts()] * 2)
    with pytest.raises(UserError, match=r"bad\.jsonl: no usable preference pairs \(2 read; skipped: "
                                        r"\{'differ_before_last_assistant_turn': 2\}\)"):
        read_pairs(path)


# ---------------------------------------------------------------- 3. dropout off


def _dropout_model(kind: str, path: Path) -> Path:
    """A tiny model whose config asks for 10 % dropout everywhere it can."""
    tok = tiny_tokenizer()
    if kind == "llama":  # attention dropout is functional here (no nn.Dropout module)
        model = tiny_llama(tok, seed=0)
        model.config.attention_dropout = 0.1
        model.save_pretrained(path)
        model = type(model).from_pretrained(path)
    else:  # GPT-2: nn.Dropout modules on embeddings, attention and residuals
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(0)
        model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=512,
                                           resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1,
                                           bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.pad_token_id))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def dropout_dir(request, tmp_path_factory):
    return _dropout_model(request.param, tmp_path_factory.mktemp(f"dropout-{request.param}") / "model")


def test_the_dropout_models_really_drop_out_in_train_mode(dropout_dir):
    """Guard for the tests below: loaded plainly, these models are not deterministic in train mode."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(dropout_dir).train()
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 16]])
    torch.manual_seed(0)
    assert not torch.equal(model(ids).logits, model(ids).logits)


def test_reward_model_trains_without_dropout(dropout_dir):
    model = load_reward_model(str(dropout_dir), tiny_tokenizer()).train()
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 16]])
    assert torch.equal(model(ids).logits, model(ids).logits)


def test_dpo_policy_equals_reference_at_step_0_with_a_dropout_config(dropout_dir, tmp_path):
    prefs = write_jsonl(tmp_path / "prefs.jsonl", toy_prefs(4))
    train_dpo(DPOConfig(policy=str(dropout_dir), prefs=str(prefs), output_dir=str(tmp_path / "dpo"), beta=1.0,
                        batch_size=4, max_steps=1, progress=False, save=False))
    row = read_log(tmp_path / "dpo")[0]  # one micro-batch, before the first update
    assert row["rewards_chosen"] == pytest.approx(0.0, abs=1e-5)
    assert row["rewards_rejected"] == pytest.approx(0.0, abs=1e-5)


def test_ppo_ratio_is_1_and_kl_0_at_step_0_with_a_dropout_config(dropout_dir, prompts, tmp_path):
    cfg = PPOConfig(policy=str(dropout_dir), prompts=str(prompts), output_dir=str(tmp_path), batch_size=4,
                    mini_batch_size=4, ppo_epochs=1, max_steps=1, max_new_tokens=6, progress=False, save=False)
    train_ppo(cfg, reward_fn=vowel_reward)
    row = read_log(tmp_path)[0]  # one epoch of one minibatch: its forward comes before the only update
    assert row["kl"] == pytest.approx(0.0, abs=1e-5)
    assert row["approx_kl"] == pytest.approx(0.0, abs=1e-10) and row["clipfrac"] == 0.0


# ---------------------------------------------------------------- 4. PPO gradient accumulation


def test_ppo_steps_the_optimizer_once_per_grad_accum_micro_batches(tiny_dir, prompts, tmp_path):
    """batch 4, minibatch 2, 2 epochs: 4 minibatches per PPO step, each in 2 micro-batches of 1.
    Every PPO step — the last rollout batch included — must take exactly 4 optimizer steps, and
    `max_steps` counts rollout batches whatever grad_accum is."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    steps_taken = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: steps_taken.append(1))
    try:
        train_ppo(PPOConfig(policy=str(tiny_dir), prompts=str(prompts), output_dir=str(tmp_path), batch_size=4,
                            mini_batch_size=2, grad_accum=2, ppo_epochs=2, max_steps=2, max_new_tokens=4,
                            progress=False, save=False), reward_fn=vowel_reward)
    finally:
        handle.remove()
    assert len(read_log(tmp_path)) == 2
    assert len(steps_taken) == 2 * 4


def _lrs_of_each_optimizer_step(run) -> list[float]:
    from torch.optim.optimizer import register_optimizer_step_post_hook

    lrs = []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    try:
        run()
    finally:
        handle.remove()
    return lrs


def test_ppo_warmup_counts_optimizer_steps(tiny_dir, prompts, tmp_path):
    """warmup_steps 6 with 4 optimizer steps per PPO step (2 minibatches × 2 epochs): the rate rises
    over the first 6 optimizer steps, as configured, not over 6 rollout batches (24 optimizer steps)."""
    lr = 1e-3
    lrs = _lrs_of_each_optimizer_step(lambda: train_ppo(PPOConfig(
        policy=str(tiny_dir), prompts=str(prompts), output_dir=str(tmp_path), batch_size=4, mini_batch_size=2,
        ppo_epochs=2, max_steps=2, max_new_tokens=4, learning_rate=lr, warmup_steps=6, progress=False,
        save=False), reward_fn=vowel_reward))
    assert lrs == pytest.approx([lr * min(1.0, (k + 1) / 6) for k in range(8)])
    assert read_log(tmp_path)[-1]["lr"] == pytest.approx(lr)


def test_ppo_rollouts_ignore_the_models_generation_config(tiny_dir, tmp_path):
    """A checkpoint whose generation_config suppresses tokens, forbids repeats, penalises them and
    sets min_p: PPO's rollouts are the tokens a clean config gives under the same seed (draws from
    softmax(logits/T), which the ratio and KL assume)."""
    import shutil

    from transformers import AutoModelForCausalLM, GenerationConfig

    from rlaif.train.models import load_tokenizer
    from rlaif.train.ppo import PolicyWithValue, rollout
    from rlaif.train.rollouts import PromptBatches

    junk_dir = tmp_path / "junk"
    shutil.copytree(tiny_dir, junk_dir)
    tok = load_tokenizer(str(tiny_dir))
    keep = {tok.eos_token_id, tok.convert_tokens_to_ids("a")}
    GenerationConfig(suppress_tokens=[i for i in range(len(tok)) if i not in keep], no_repeat_ngram_size=1,
                     repetition_penalty=3.0, min_p=0.5, top_k=3, do_sample=True,
                     eos_token_id=tok.eos_token_id).save_pretrained(junk_dir)
    cfg = PPOConfig(max_new_tokens=12)
    batch = PromptBatches(tok, [[_msg("user", f"say {w}")] for w in WORDS], 64)(list(range(4)))
    out = [rollout(PolicyWithValue(AutoModelForCausalLM.from_pretrained(str(d))), batch, tok, cfg, seed=5)
           for d in (tiny_dir, junk_dir)]
    assert AutoModelForCausalLM.from_pretrained(str(junk_dir)).generation_config.no_repeat_ngram_size == 1
    assert out[1].tolist() == out[0].tolist()
    assert len(set(out[0].flatten().tolist())) > 2  # the clean draws use tokens the junk config suppresses


# ---------------------------------------------------------------- 5. PPO precision


@pytest.fixture
def bf16_autocast(monkeypatch):
    """`accelerate launch --mixed_precision bf16` on CPU: the Accelerator reads it from the environment."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def test_ppo_kl_is_0_at_step_0_under_bf16_autocast(bf16_autocast, tiny_dir, prompts, tmp_path):
    cfg = PPOConfig(policy=str(tiny_dir), prompts=str(prompts), output_dir=str(tmp_path), batch_size=4,
                    mini_batch_size=4, ppo_epochs=1, max_steps=1, max_new_tokens=6, progress=False, save=False)
    result = train_ppo(cfg, reward_fn=vowel_reward)
    assert result["mixed_precision"] == "bf16"
    row = read_log(tmp_path)[0]
    assert row["kl"] == pytest.approx(0.0, abs=1e-6)
    assert row["approx_kl"] == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- sign and masking, seen from outside


def _completion_logp(model, tok, prompt: list[dict], completion: list[dict]) -> float:
    """log p(completion | prompt) from the whole chat text, without any of the trainers' code."""
    head = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(prompt + completion, tokenize=False)
    assert full.startswith(head)
    ids = tok(full, add_special_tokens=False, return_tensors="pt").input_ids
    n = len(tok(head, add_special_tokens=False).input_ids)
    with torch.no_grad():
        logp = model(ids).logits[0, :-1].float().log_softmax(-1).gather(-1, ids[0, 1:, None])[:, 0]
    return logp[n - 1:].sum().item()


def test_dpo_raises_chosen_over_rejected_on_held_out_pairs(tiny_dir, tmp_path):
    """Trained on "yes, gladly: X are nice." over "no. X?", the saved policy must prefer the polite
    reply on topics it never saw, measured from the saved weights alone: a chosen/rejected swap
    anywhere in the trainer (loss, batch assembly, reference table) fails here even when its own
    logged margins look right."""
    from transformers import AutoModelForCausalLM

    prefs = write_jsonl(tmp_path / "train.jsonl", toy_prefs(16))
    train_dpo(DPOConfig(policy=str(tiny_dir), prefs=str(prefs), output_dir=str(tmp_path / "dpo"), beta=0.1,
                        batch_size=8, max_steps=8, learning_rate=3e-3, progress=False))
    tok = tiny_tokenizer()
    held = [([_msg("user", f"tell me about {t}")], [_msg("assistant", f"yes, gladly: {t} are nice.")],
             [_msg("assistant", f"no. {t}?")]) for t in ("lamps", "pears", "boats", "ferns", "gulls", "mugs")]

    def margins(model) -> list[float]:
        model.eval()
        return [_completion_logp(model, tok, p, c) - _completion_logp(model, tok, p, r) for p, c, r in held]

    before = margins(AutoModelForCausalLM.from_pretrained(tiny_dir))
    after = margins(AutoModelForCausalLM.from_pretrained(tmp_path / "dpo"))
    assert all(a > b + 5.0 for a, b in zip(after, before)), (before, after)  # measured: about +24 nats


def test_ppo_minibatch_loss_ignores_everything_after_the_first_eos():
    """Post-EOS positions (padding from `generate`) must not reach the PPO loss: changing their
    tokens, old log-probs, values, advantages or returns leaves it unchanged; changing a response
    token before the EOS does not."""
    from rlaif.train.ppo import PolicyWithValue, Rollouts, minibatch_loss
    from rlaif.tensors import positions
    from rlaif.train.rollouts import response_mask

    tok = tiny_tokenizer()
    policy = PolicyWithValue(tiny_llama(tok, seed=0))
    torch.nn.init.normal_(policy.v_head.weight, std=0.5)  # a value head that reads its inputs
    g = torch.Generator().manual_seed(0)
    prompt = torch.tensor([[tok.pad_token_id, 10, 11, 12], [13, 14, 15, 16]])
    prompt_mask = (prompt != tok.pad_token_id).long()
    responses = torch.tensor([[20, 21, tok.eos_token_id, 22, 23, 24], [25, 26, 27, 28, 29, 30]])
    mask, _ = response_mask(responses, tok.eos_token_id)
    T = responses.shape[1]

    def rollouts(responses, garbage_seed: int) -> Rollouts:
        noise = torch.Generator().manual_seed(garbage_seed)
        after = (1 - mask).bool()

        def per_token(x):  # the same values under the mask, other values after the EOS
            return torch.where(after, torch.randn(2, T, generator=noise) * 3, x)

        full = torch.cat([prompt, responses], 1)
        full_mask = torch.cat([prompt_mask, mask], 1)
        return Rollouts(full, full_mask, positions(full_mask), responses, prompt.shape[1],
                        per_token(old_logp), per_token(old_values), per_token(advantages),
                        per_token(returns), mask.float())

    old_logp = -torch.rand(2, T, generator=g) * 4
    old_values, advantages, returns = (torch.randn(2, T, generator=g) for _ in range(3))
    cfg = PPOConfig(vf_coef=0.5)
    mb = torch.arange(2)
    other = responses.clone()
    other[0, 3:] = torch.tensor([31, 32, 33])  # new tokens after row 0's EOS
    base, _ = minibatch_loss(policy, rollouts(responses, 1), mb, cfg)
    changed_after, _ = minibatch_loss(policy, rollouts(other, 2), mb, cfg)
    assert torch.allclose(base, changed_after, rtol=0, atol=1e-6), (base, changed_after)
    before_eos = responses.clone()
    before_eos[0, 1] = 33
    changed_before, _ = minibatch_loss(policy, rollouts(before_eos, 1), mb, cfg)
    assert (changed_before - base).abs() > 1e-4
