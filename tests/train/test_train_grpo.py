"""GRPO / RLOO / Dr. GRPO: the advantages and the loss by hand, the trainer on tiny random-weight
models (reward up, masking, failures kept out), judge rewards through the rule judge and through a
real OpenAI-protocol server on 127.0.0.1, and the bad-input lines."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from train_fixtures import WORDS, read_log, say_prompts, tiny_tokenizer, vowel_reward, write_jsonl
from rule_judge import RuleJudge  # noqa: E402

from rlaif.train.grpo import (GRPOConfig, group_advantages, grpo_loss, k3_kl, per_token_loss,  # noqa: E402
                              token_weights)
from rlaif.judge import Judge  # noqa: E402
from rlaif.train.rewards import Component, JudgeReward, RewardSet, RewardSpec, brevity  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")




@pytest.fixture(scope="module")
def prompts(tmp_path_factory):
    return say_prompts(tmp_path_factory.mktemp("prompts"))


# ---------------------------------------------------------------- advantages


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 0.0, 0.0])
    ok = torch.ones(8, dtype=torch.bool)
    adv, usable, zero = group_advantages(r, ok, 4, "dr_grpo", "none")
    assert adv[:4].tolist() == pytest.approx([-2.0, -1.0, 0.0, 3.0]) and adv[4:].abs().sum() == 0
    assert zero.tolist() == [False, True] and usable.all()
    std = torch.tensor([1.0, 2.0, 3.0, 6.0]).std().item()  # unbiased, as TRL
    adv, _, _ = group_advantages(r, ok, 4, "grpo", "group")
    assert adv[:4].tolist() == pytest.approx([x / (std + 1e-4) for x in (-2.0, -1.0, 0.0, 3.0)])
    # RLOO: R_i minus the mean of the others = G/(G-1)·(R_i − mean)
    adv, _, _ = group_advantages(r, ok, 4, "rloo", "none")
    assert adv[:4].tolist() == pytest.approx([1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2])
    assert adv[:4].tolist() == pytest.approx([4 / 3 * x for x in (-2.0, -1.0, 0.0, 3.0)])
    batch_std = r.std().item()
    adv, _, _ = group_advantages(r, ok, 4, "grpo", "batch")
    assert adv[:4].tolist() == pytest.approx([x / (batch_std + 1e-4) for x in (-2.0, -1.0, 0.0, 3.0)])


def test_a_failed_reward_is_out_of_the_baseline_and_the_loss():
    ok = torch.tensor([True, True, False, True, True, False, False, False])
    a = group_advantages(torch.tensor([1.0, 2.0, 100.0, 6.0, 5.0, 0, 0, 0]), ok, 4, "rloo", "none")
    b = group_advantages(torch.tensor([1.0, 2.0, -7.0, 6.0, 5.0, 0, 0, 0]), ok, 4, "rloo", "none")
    assert torch.equal(a[0], b[0])  # whatever the failed reply's placeholder, nothing moves
    assert a[0][:4].tolist() == pytest.approx([1 - 4, 2 - 3.5, 0.0, 6 - 1.5])
    # the second group has one scored reply: no baseline, no signal, left out
    assert a[1].tolist() == [True, True, False, True, False, False, False, False]


# ---------------------------------------------------------------- the loss


def test_per_token_loss_clip_and_k3():
    logp = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    old = torch.log(torch.tensor([[0.5, 0.25], [0.5, 0.25]]))  # ratios 1 and 2
    adv = torch.tensor([1.0, -1.0])
    loss, ratio, clipped, kl = per_token_loss(logp, old, adv, 0.2)
    assert ratio.flatten().tolist() == pytest.approx([1, 2, 1, 2])
    # A > 0: the gain is capped at 1.2·A; A < 0: the pessimistic (unclipped) term −2·A is kept
    assert loss.flatten().tolist() == pytest.approx([-1.0, -1.2, 1.0, 2.0])
    assert clipped.tolist() == [[False, True], [False, False]] and kl is None
    ref = torch.log(torch.tensor([[0.25, 0.5], [0.5, 0.5]]))
    _, _, _, kl = per_token_loss(logp, logp, adv, 0.2, beta=0.1, ref_logp=ref)
    assert kl[0, 0].item() == pytest.approx(0.5 - torch.log(torch.tensor(0.5)).item() - 1)
    assert kl[0, 1].item() == 0 and (k3_kl(logp, ref) >= 0).all()


def test_token_weights_match_the_three_aggregations():
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    ell = torch.tensor([[1.0, 1.0, 1.0, 1.0], [4.0, 9.0, 9.0, 9.0]])
    total = lambda kind: (ell * token_weights(mask, kind, 8)).sum().item()  # noqa: E731
    assert total("grpo") == pytest.approx((1.0 + 4.0) / 2)  # per-sequence means, averaged
    assert total("bnpo") == pytest.approx((4 + 4) / 5)  # token mean over the batch
    assert total("dr_grpo") == pytest.approx((4 + 4) / (2 * 8))  # constant normaliser N·max_new_tokens
    # a part of a batch with the batch's counts: the parts' losses add up to the whole
    whole = (ell * token_weights(mask, "bnpo", 8)).sum()
    parts = sum((ell[i:i + 1] * token_weights(mask[i:i + 1], "bnpo", 8, 2, 5)).sum() for i in range(2))
    assert parts.item() == pytest.approx(whole.item())


def test_the_gradient_raises_a_positive_advantage_reply_and_skips_masked_tokens():
    """Sign and mask: one SGD step along −∇loss raises log π of the tokens with A > 0, lowers those with
    A < 0, and a masked token (a prompt token or past EOS) gets no gradient."""
    logits = torch.zeros(2, 3, 5, requires_grad=True)
    tokens = torch.tensor([[1, 2, 3], [1, 2, 3]])
    logp = torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    loss, _ = grpo_loss(logp, logp.detach(), torch.tensor([1.0, -1.0]), mask, GRPOConfig(rewards=[]))
    loss.backward()
    g = logits.grad
    assert g[0, 2].abs().sum() == 0  # masked
    assert (g[0, :2].gather(-1, tokens[0, :2].unsqueeze(-1)) < 0).all()  # descent raises the A > 0 tokens
    assert (g[1].gather(-1, tokens[1].unsqueeze(-1)) > 0).all()


def test_batch_scaling_takes_the_std_of_every_process():
    """`scale_rewards: batch` on a batch split over two workers whose sums are all-reduced (two
    threads standing in for two processes) equals the whole batch's advantages; each part scaled by
    its own std (what each process did alone) does not."""
    import threading

    r = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.5, 4.0, 4.5])
    ok = torch.tensor([True, True, True, True, True, False, True, True])
    whole, _, _ = group_advantages(r, ok, 2, "grpo", "batch")
    parts = [(r[:4], ok[:4]), (r[4:], ok[4:])]
    slots, got = [None, None], [None, None]
    barrier = threading.Barrier(2)

    def worker(k):
        def all_reduce_sum(t):
            slots[k] = t
            barrier.wait()
            out = slots[0] + slots[1]
            barrier.wait()
            return out
        got[k] = group_advantages(*parts[k], 2, "grpo", "batch", batch_sum=all_reduce_sum)[0]

    threads = [threading.Thread(target=worker, args=(k,)) for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.cat(got).tolist() == pytest.approx(whole.tolist(), abs=1e-6)
    alone = torch.cat([group_advantages(pr, pv, 2, "grpo", "batch")[0] for pr, pv in parts])
    assert alone.tolist() != pytest.approx(whole.tolist(), abs=1e-3)


def test_dr_grpo_advantage_takes_dr_grpo_loss_or_is_refused():
    """Dr. GRPO is an advantage without the std *and* a constant normaliser: `advantage: dr_grpo`
    alone gives both; with another loss_type it is refused, naming loss_type."""
    assert GRPOConfig(advantage="dr_grpo").loss_type == "dr_grpo"
    assert GRPOConfig(advantage="dr_grpo", loss_type="dr_grpo").loss_type == "dr_grpo"
    assert GRPOConfig().loss_type == "grpo" and GRPOConfig(loss_type="dr_grpo").loss_type == "dr_grpo"
    for other in ("grpo", "bnpo"):
        with pytest.raises(ValueError, match="loss_type"):
            GRPOConfig(advantage="dr_grpo", loss_type=other)


# ---------------------------------------------------------------- sampling


def test_row_sampler_draws_from_softmax_over_temperature():
    """Gumbel-max over each row's own stream: the frequencies of 20 000 draws match softmax(z/T)
    (a sign slip in the noise, or T applied the wrong way, gives other frequencies)."""
    from rlaif.train.grpo_loop import RowSampler

    z = torch.tensor([2.0, 1.0, 0.0, -1.0, -3.0])
    for T in (1.0, 0.5, 2.0):
        sampler = RowSampler(range(20_000), T, "cpu")
        picks = sampler(None, z.expand(20_000, 5)).argmax(-1)
        freq = torch.bincount(picks, minlength=5).double() / 20_000
        assert freq.tolist() == pytest.approx(torch.softmax(z.double() / T, -1).tolist(), abs=0.012), T


def test_a_reply_does_not_depend_on_the_rows_beside_it(tiny_dir):
    """Same row seed, other batch companions (and another left padding): the same reply. This is what
    makes a split batch sample what one process samples."""
    from transformers import AutoModelForCausalLM

    from rlaif.train.models import load_tokenizer
    from rlaif.train.grpo_loop import sample
    from rlaif.train.rollouts import PromptBatches

    tok = load_tokenizer(str(tiny_dir))
    lm = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    prompts = [[{"role": "user", "content": t}] for t in ("say hi", "a much longer prompt than the other", "ok")]
    batches = PromptBatches(tok, prompts, 64)
    cfg = GRPOConfig(max_new_tokens=10, temperature=1.3)
    together = batches([0, 1, 2])
    a = sample(lm, together["input_ids"], together["attention_mask"], tok, cfg, row_seeds=[11, 12, 13])
    alone = batches([2])
    b = sample(lm, alone["input_ids"], alone["attention_mask"], tok, cfg, row_seeds=[13])
    assert a[2].tolist() == b[0].tolist()
    c = sample(lm, alone["input_ids"], alone["attention_mask"], tok, cfg, row_seeds=[14])
    assert c[0].tolist() != b[0].tolist()  # another seed, another reply


def _junk_generation_config(lm, tok):
    """Settings a checkpoint's generation_config may carry that change the distribution sampled from."""
    g = lm.generation_config
    keep = {tok.eos_token_id, tok.convert_tokens_to_ids("a")}
    g.suppress_tokens = [i for i in range(len(tok)) if i not in keep]
    g.no_repeat_ngram_size = 1
    g.repetition_penalty = 3.0
    g.min_p = 0.5
    g.top_k = 3
    g.do_sample = True
    return lm


def test_grpo_rollouts_ignore_the_models_generation_config(tiny_dir):
    """A generation_config with suppressed tokens, min_p, a repetition penalty, no-repeat n-grams: the
    rollouts are still draws from softmax(logits/T), the very tokens a clean config gives."""
    from transformers import AutoModelForCausalLM

    from rlaif.train.models import load_tokenizer
    from rlaif.train.grpo_loop import sample
    from rlaif.train.rollouts import PromptBatches

    tok = load_tokenizer(str(tiny_dir))
    clean = AutoModelForCausalLM.from_pretrained(str(tiny_dir))
    junk = _junk_generation_config(AutoModelForCausalLM.from_pretrained(str(tiny_dir)), tok)
    b = PromptBatches(tok, [[{"role": "user", "content": w}] for w in WORDS[:4]], 64)(list(range(4)))
    cfg = GRPOConfig(max_new_tokens=12)
    want = sample(clean, b["input_ids"], b["attention_mask"], tok, cfg, row_seeds=[1, 2, 3, 4])
    got = sample(junk, b["input_ids"], b["attention_mask"], tok, cfg, row_seeds=[1, 2, 3, 4])
    assert got.tolist() == want.tolist()
    assert len(set(want.flatten().tolist())) > 2  # the clean draws use tokens the junk config suppresses


# ---------------------------------------------------------------- the trainer


@pytest.fixture(scope="module")
def grpo_run(one_thread, tiny_dir, prompts, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    cfg = GRPOConfig(policy=str(tiny_dir), prompts=str(prompts), output_dir=str(out), batch_size=4,
                     num_generations=4, max_steps=14, learning_rate=3e-2, max_new_tokens=8, beta=0.04,
                     num_iterations=2, grad_accum=2, progress=False)
    from rlaif.train.grpo_loop import train_grpo

    return cfg, train_grpo(cfg, reward_fn=vowel_reward), out


def test_grpo_raises_the_reward(grpo_run):
    cfg, result, out = grpo_run
    rows = read_log(out)
    assert len(rows) == 14
    first, last = sum(r["reward"] for r in rows[:3]) / 3, sum(r["reward"] for r in rows[-3:]) / 3
    assert last > first + 0.05, (first, last)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # step 1's first pass: policy == reference
    for key in ("reward_std", "rewards/reward/mean", "rewards/reward/std", "frac_reward_zero_std", "clip_ratio",
                "entropy", "completion_length", "sampled_tokens", "reward_failed", "judge_directed_rate"):
        assert key in rows[-1], key
    assert all(0.0 <= r["judge_directed_rate"] <= 1.0 for r in rows)
    assert any(r["clip_ratio"] > 0 for r in rows)  # μ = 2: the second pass is off-policy and clips
    assert rows[-1]["sampled_tokens"] > rows[0]["sampled_tokens"] > 0
    assert (out / "model.safetensors").exists() and result["steps"] == 14


def test_grpo_warmup_counts_optimizer_steps(tiny_dir, prompts, tmp_path):
    """warmup_steps 4 with μ = 2 optimizer steps per generation batch (each over 2 micro-batches): the
    rate rises over the first 4 optimizer steps, not over 4 generation batches (8 optimizer steps)."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from rlaif.train.grpo_loop import train_grpo

    lr, lrs = 1e-3, []
    handle = register_optimizer_step_post_hook(lambda opt, args, kwargs: lrs.append(opt.param_groups[0]["lr"]))
    try:
        train_grpo(GRPOConfig(policy=str(tiny_dir), prompts=str(prompts), output_dir=str(tmp_path), batch_size=2,
                              num_generations=2, max_steps=3, max_new_tokens=4, num_iterations=2, grad_accum=2,
                              learning_rate=lr, warmup_steps=4, save=False, progress=False), reward_fn=vowel_reward)
    finally:
        handle.remove()
    assert lrs == pytest.approx([lr * min(1.0, (k + 1) / 4) for k in range(6)])
    assert [r["lr"] for r in read_log(tmp_path)] == pytest.approx([lr * 0.75, lr, lr])


@pytest.mark.parametrize("advantage", ["rloo", "dr_grpo"])
def test_rloo_and_dr_grpo_raise_the_reward_without_a_reference(advantage, tiny_dir, prompts, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from rlaif.train.grpo_loop import train_grpo

    loads = []
    real = AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loads.append(a) or real(*a, **k))
    cfg = GRPOConfig(policy=str(tiny_dir), prompts=str(prompts), output_dir=str(tmp_path), batch_size=4,
                     num_generations=4, max_steps=14, learning_rate=3e-2, max_new_tokens=8, advantage=advantage,
                     loss_type="bnpo" if advantage == "rloo" else "dr_grpo", save=False, progress=False)
    train_grpo(cfg, reward_fn=vowel_reward)
    assert len(loads) == 1  # β = 0: the policy alone, no reference in memory
    rows = read_log(tmp_path)
    assert "kl" not in rows[0]
    assert sum(r["reward"] for r in rows[-3:]) / 3 > sum(r["reward"] for r in rows[:3]) / 3 + 0.05


def test_failed_rewards_are_counted_and_written(tiny_dir, prompts, tmp_path):
    from rlaif.train.grpo_loop import train_grpo

    def flaky(prompts_, texts):  # every reply to "say hi" fails
        return [None if p[-1]["content"] == "say hi" else v for p, v in zip(prompts_, vowel_reward(prompts_, texts))]

    cfg = GRPOConfig(policy=str(tiny_dir), prompts=str(prompts), output_dir=str(tmp_path), batch_size=8,
                     num_generations=2, max_steps=1, max_new_tokens=4, save=False, progress=False)
    result = train_grpo(cfg, reward_fn=flaky)
    row = read_log(tmp_path)[0]
    assert row["reward_failed"] == 2 and result["reward_failed"] == 2
    lines = [json.loads(x) for x in (tmp_path / "reward_failures.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and all(x["reward"] == "reward" and x["step"] == 1 for x in lines)


# ---------------------------------------------------------------- rewards


GROUP_PROMPTS = [[{"role": "user", "content": "name a colour"}]] * 3
GROUP_REPLIES = ["red", "a deep and lovely shade of blue", "green, I would say"]


def test_pairwise_judge_reward_ranks_a_group_by_the_rule():
    from rlaif.constitution import load_constitution

    judge = JudgeReward("pw", 1.0, Judge(RuleJudge("shorter", 0.9), load_constitution("concise")), "pairwise")
    values, reasons = judge.score(GROUP_PROMPTS, GROUP_REPLIES, [0, 0, 0])
    # each reply against the two others, both orders: shortest wins both (0.9), longest loses both (0.1)
    assert values == pytest.approx([0.9, 0.1, 0.5]) and reasons == [None] * 3
    ref = JudgeReward("pw", 1.0, Judge(RuleJudge("shorter", 0.9), load_constitution("concise")), "reference",
                      references={__import__("rlaif.records", fromlist=["record_id"]).record_id(GROUP_PROMPTS[0]):
                                    "a reply of five words"})
    values, _ = ref.score(GROUP_PROMPTS, GROUP_REPLIES, [0, 0, 0])
    assert values == pytest.approx([0.9, 0.1, 0.9])


def test_weighted_sum_and_a_rule():
    from rlaif.constitution import load_constitution

    direct = JudgeReward("direct", 2.0, Judge(RuleJudge("shorter", 0.9), load_constitution("concise")))
    rs = RewardSet([direct, Component("brevity", 0.5, brevity)])
    totals, per, failures = rs(GROUP_PROMPTS, GROUP_REPLIES, [0, 0, 0])
    assert totals == pytest.approx([2 * d + 0.5 * b for d, b in zip(per["direct"], per["brevity"])])
    assert per["brevity"] == pytest.approx(brevity(None, GROUP_REPLIES)) and not failures
    assert per["direct"][0] > per["direct"][1]


def test_server_judge_scores_groups_and_fails_per_record():
    """The judge behind a real OpenAI-protocol HTTP server: one group's requests go out together; the
    replies whose requests always fail get None and a reason, the others their scores."""
    from servers.fake_openai import FakeOpenAIServer

    from rlaif.backends.openai_engine import OpenAIEngine
    from rlaif.config import EngineConfig
    from rlaif.constitution import load_constitution

    prompts = [[{"role": "user", "content": f"question {k}"}] for k in (1, 1, 2, 2)]
    replies = ["fine", "poisoned reply", "ok", "sure"]
    with FakeOpenAIServer(fail_matching=["poisoned"], fail_fault="400", delay=0.2) as srv:
        eng = OpenAIEngine(EngineConfig(kind="openai", model="fake-model", base_url=srv.base_url, top_logprobs=20,
                                        max_retries=0, concurrency=8))
        try:
            rs = RewardSet([JudgeReward("direct", 1.0, Judge(eng, load_constitution("harmless")))])
            totals, per, failures = rs(prompts, replies, [0, 0, 1, 1])
            alone, _, _ = rs(prompts[:1] + prompts[2:], replies[:1] + replies[2:], [0, 1, 1])
        finally:
            eng.close()
        assert srv.max_in_flight > 1  # concurrent requests
    assert totals[1] is None and all(isinstance(t, float) for i, t in enumerate(totals) if i != 1)
    assert [totals[0], totals[2], totals[3]] == pytest.approx(alone)  # the others' scores are unchanged
    assert len(failures) == 1 and failures[0]["reply"] == 1 and failures[0]["reason"]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, field", [
    (["--num-generations", "1"], "num_generations"),
    (["--reward-weight", "nope=2"], "reward_weights"),
    (["--reward", "rule:no_such_module_xyz:f"], "rewards.0.function"),
    (["--reward", "rule:rlaif.train.rewards:no_such_function"], "rewards.0.function"),
    (["--advantage", "rloo", "--set", "num_generations=1"], "num_generations"),
    (["--advantage", "dr_grpo", "--loss-type", "grpo"], "loss_type"),
])
def test_bad_input_is_one_line_and_exit_2(args, field, tiny_dir, prompts, tmp_path, capsys):
    from rlaif.cli import main

    code = main(["grpo", "--prompts", str(prompts), "--policy", str(tiny_dir), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and field in err[0], err


def test_reward_spec_needs_its_fields():
    with pytest.raises(ValueError, match="spec"):
        RewardSpec(kind="model")
    with pytest.raises(ValueError, match="unique"):
        GRPOConfig(rewards=[{"kind": "rule", "function": "rlaif.train.rewards:brevity", "name": "a"},
                            {"kind": "rule", "function": "rlaif.train.rewards:brevity", "name": "a"}])


@pytest.mark.slow
def test_grpo_under_two_processes_logs_what_one_process_does(tiny_dir, prompts, tmp_path):
    """Under `accelerate launch` (2 processes, gloo) on the same global batch as one process: each
    reply is drawn from its own seeded stream, so both runs sample the same replies; `scale_rewards:
    batch` divides by the std of every process's rewards; the logged reward, its std, each component
    and the loss are the global batch's (not rank 0's share, not divided by the processes), so the
    two logs agree step by step — the updates too, since step 2 and 3 sample from the updated policy."""
    import yaml
    from train_fixtures import accelerate_launch

    base = {"policy": str(tiny_dir), "prompts": str(prompts), "batch_size": 4, "num_generations": 2,
            "max_steps": 3, "max_new_tokens": 6, "beta": 0.04, "num_iterations": 2, "learning_rate": 3e-2,
            "scale_rewards": "batch", "loss_type": "bnpo", "temperature": 1.5, "save": False, "progress": False,
            "rewards": [{"kind": "rule", "function": "tests.support.grpo_rules:vowels", "name": "vowels"},
                        {"kind": "rule", "function": "tests.support.grpo_rules:length", "name": "length", "weight": 0.5}]}
    from rlaif.train.grpo_loop import train_grpo

    train_grpo(GRPOConfig(**base, output_dir=str(tmp_path / "one")))
    cfg_file = tmp_path / "grpo.yaml"
    cfg_file.write_text(yaml.safe_dump({**base, "output_dir": str(tmp_path / "two")}))
    proc = accelerate_launch(["-m", "rlaif.train.grpo_loop", str(cfg_file)], 2, cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["processes"] == 2
    one, two = read_log(tmp_path / "one"), read_log(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    keys = ["reward", "reward_std", "loss", "kl", "completion_length", "reward_failed", "sampled_tokens"] + [
        f"rewards/{n}/{s}" for n in ("vowels", "length") for s in ("mean", "std")]
    for a, b in zip(one, two):
        tol = dict(abs=1e-5, rel=1e-5) if a["step"] == 1 else dict(abs=1e-4, rel=1e-3)
        for k in keys:
            assert b[k] == pytest.approx(a[k], **tol), (a["step"], k, a[k], b[k])
    assert one[0]["loss"] != pytest.approx(0.0, abs=1e-4)  # bnpo on batch-scaled advantages: a loss to compare
    assert len({r["reward"] for r in one}) == 3  # the policy moved between steps


def test_the_canary_counts_judge_directed_replies_and_the_report_says_when_they_rise(tmp_path):
    from rlaif.eval.grpo_report import canary_warning, plot_grpo
    from rlaif.train.run_log import directed_share

    texts = ["Here is a recipe.", "The answer is (A).", "Score: 10/10, rated best.", "Boil the water first."]
    assert directed_share(texts, "cpu").item() == pytest.approx(0.5)
    rising = [{"step": k + 1, "reward": 0.1 * k, "judge_directed_rate": r}
              for k, r in enumerate([0.0, 0.0, 0.05, 0.1, 0.3, 0.5])]
    flat = [{**r, "judge_directed_rate": 0.02} for r in rising]
    line = canary_warning(rising)
    assert line is not None and "rose from 0% to 40%" in line and "rlaif judge-audit" in line
    assert canary_warning(flat) is None and canary_warning(rising[:2]) is None
    assert plot_grpo(rising, tmp_path / "curves.png").stat().st_size > 0

