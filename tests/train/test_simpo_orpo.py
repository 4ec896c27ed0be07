"""The reference-free preference losses: SimPO and CPO (`rlaif dpo --loss simpo|cpo`) and ORPO
(`rlaif orpo`).

Equality with TRL 1.16, which keeps them in `trl.experimental` (CPOTrainer: loss_type "simpo" with
cpo_alpha 0 is SimPO, loss_type "sigmoid" with cpo_alpha α is CPO; ORPOTrainer): the real trainers
are built on a tiny model, their collated batch is fed to both sides, and the loss and every
parameter's gradient must agree within 1e-5. Soft labels: per pair, our loss must equal the
expectation of TRL's per-pair loss over the two readings of the pair (p on chosen ≻ rejected,
1 − p on the swap), TRL's functions evaluated on both orders. Then the trainers on the tiny model:
they learn a toy preference set, and bad input is one line and exit 2.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from train_fixtures import tiny_llama, tiny_tokenizer, toy_prefs, write_jsonl

from rlaif.train.dpo import DPOConfig, batch_loss, reference_free_loss, train_dpo  # noqa: E402
from rlaif.train.orpo import ORPOConfig, orpo_loss, train_orpo  # noqa: E402
from rlaif.train.orpo import batch_loss as orpo_batch_loss  # noqa: E402
from rlaif.train.pair_logps import pair_logps, soft_nll  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-5
SOFT_P = torch.tensor([0.9, 0.7, 0.5, 0.2])


@pytest.fixture(scope="module")
def trl_setup(tmp_path_factory):
    pytest.importorskip("trl")
    from datasets import Dataset

    tok = tiny_tokenizer()
    rows = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in toy_prefs(4)])
    yield tok, rows, tmp_path_factory.mktemp("trl")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def cpo_trainer(setup, **kw):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tok, rows, tmp = setup
    args = CPOConfig(output_dir=str(tmp / "cpo"), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                     bf16=False, max_length=None, **kw)
    return CPOTrainer(model=tiny_llama(tok, seed=0), args=args, train_dataset=rows, processing_class=tok)


def orpo_trainer(setup, **kw):
    from trl.experimental.orpo import ORPOConfig as TRLORPOConfig
    from trl.experimental.orpo import ORPOTrainer

    tok, rows, tmp = setup
    args = TRLORPOConfig(output_dir=str(tmp / "orpo"), per_device_train_batch_size=4, report_to=[], use_cpu=True,
                         bf16=False, max_length=512, **kw)
    return ORPOTrainer(model=tiny_llama(tok, seed=0), args=args, train_dataset=rows, processing_class=tok)


def trl_batch(trainer) -> dict:
    b = next(iter(trainer.get_train_dataloader()))
    return {k: v.cpu() if torch.is_tensor(v) else v for k, v in b.items()}


def swapped(b: dict) -> dict:
    """The same batch with chosen and rejected exchanged (the pair read the other way round)."""
    out = {}
    for k, v in b.items():
        out[k.replace("chosen", "\0").replace("rejected", "chosen").replace("\0", "rejected")] = v
    return out


def ours_batch(trainer, b: dict, p) -> dict:
    """TRL's collated batch in our shape: [chosen…, rejected…], completion mask = TRL's labels."""
    c = trainer.concatenated_inputs(b, padding_value=trainer.processing_class.pad_token_id)
    n = b["chosen_input_ids"].shape[0]
    return {"input_ids": c["concatenated_input_ids"], "attention_mask": c["concatenated_attention_mask"],
            "completion_mask": (c["concatenated_labels"] != -100).long(),
            "p": torch.as_tensor(p, dtype=torch.float32).expand(n).clone(), "idx": torch.arange(n)}


def loss_and_grads(model, fn) -> tuple[float, dict]:
    model.zero_grad()
    model.train()
    loss = fn()
    loss.backward()
    grads = {k: v.grad.detach().clone() for k, v in model.named_parameters() if v.grad is not None}
    model.zero_grad()
    return loss.item(), grads


def assert_same(ours, theirs):
    (lo, go), (lt, gt) = ours, theirs
    assert abs(lo - lt) <= TOL * max(1.0, abs(lt)), (lo, lt)
    assert go.keys() == gt.keys() and go
    worst = max((go[k] - gt[k]).abs().max().item() for k in go)
    assert worst <= TOL, worst
    assert max(g.abs().max().item() for g in go.values()) > 1e-4  # a gradient that could have differed


# ---------------------------------------------------------------- equal to TRL on hard labels


def test_simpo_equals_trl_cpo_trainer_simpo(trl_setup):
    tr = cpo_trainer(trl_setup, loss_type="simpo", beta=2.0, simpo_gamma=1.0, cpo_alpha=0.0)
    b = trl_batch(tr)
    cfg = DPOConfig(loss="simpo", beta=2.0, simpo_gamma=1.0)
    theirs = loss_and_grads(tr.model, lambda: tr.compute_loss(tr.model, dict(b)))
    ours = loss_and_grads(tr.model, lambda: batch_loss(tr.model, ours_batch(tr, b, 1.0), None, cfg)[0])
    assert_same(ours, theirs)


def test_cpo_equals_trl_cpo_trainer_with_its_nll_term(trl_setup):
    tr = cpo_trainer(trl_setup, loss_type="sigmoid", beta=0.3, cpo_alpha=0.7)
    b = trl_batch(tr)
    cfg = DPOConfig(loss="cpo", beta=0.3, cpo_alpha=0.7)
    theirs = loss_and_grads(tr.model, lambda: tr.compute_loss(tr.model, dict(b)))
    ours = loss_and_grads(tr.model, lambda: batch_loss(tr.model, ours_batch(tr, b, 1.0), None, cfg)[0])
    assert_same(ours, theirs)
    # and the NLL term is in it: without it the loss differs
    bare = batch_loss(tr.model, ours_batch(tr, b, 1.0), None, cfg.model_copy(update={"cpo_alpha": 0.0}))[0]
    assert abs(bare.item() - theirs[0]) > 1e-2


def test_orpo_with_sft_on_all_tokens_equals_trl_orpo_trainer(trl_setup):
    tr = orpo_trainer(trl_setup, beta=0.25)
    b = trl_batch(tr)
    cfg = ORPOConfig(beta=0.25, sft_on="all")
    theirs = loss_and_grads(tr.model, lambda: tr.compute_loss(tr.model, dict(b)))
    ours = loss_and_grads(tr.model, lambda: orpo_batch_loss(tr.model, ours_batch(tr, b, 1.0), cfg)[0])
    assert_same(ours, theirs)


def test_orpo_on_completion_tokens_equals_trls_parts(trl_setup):
    """Our default takes the SFT term on the reply's tokens: TRL's CPO trainer computes exactly that
    NLL (its cpo_alpha term, on the same labels), and ORPOTrainer.odds_ratio_loss the rest."""
    cpo = cpo_trainer(trl_setup, loss_type="simpo", cpo_alpha=1.0)  # simpo: per-token mean log-probs
    orpo = orpo_trainer(trl_setup, beta=0.25)
    orpo.model = cpo.model
    b = trl_batch(cpo)

    def theirs_fn():
        a_c, a_r, _, _, nll = cpo.concatenated_forward(cpo.model, dict(b))
        return nll - orpo.odds_ratio_loss(a_c, a_r)[0].mean()

    cfg = ORPOConfig(beta=0.25)
    theirs = loss_and_grads(cpo.model, theirs_fn)
    ours = loss_and_grads(cpo.model, lambda: orpo_batch_loss(cpo.model, ours_batch(cpo, b, 1.0), cfg)[0])
    assert_same(ours, theirs)
    every = orpo_batch_loss(cpo.model, ours_batch(cpo, b, 1.0), cfg.model_copy(update={"sft_on": "all"}))[0]
    assert abs(every.item() - theirs[0]) > 1e-3  # the prompt's tokens do change the SFT term


# ---------------------------------------------------------------- soft labels: the expectation over both readings


def test_soft_simpo_and_cpo_are_the_expectation_of_trls_loss_over_both_orders(trl_setup):
    from trl.experimental.cpo.cpo_trainer import CPOTrainer

    for loss, kw in (("simpo", dict(loss_type="simpo", beta=2.0, simpo_gamma=1.0, cpo_alpha=0.0)),
                     ("cpo", dict(loss_type="sigmoid", beta=0.3, cpo_alpha=0.7))):
        tr = cpo_trainer(trl_setup, **kw)
        b = trl_batch(tr)
        cfg = DPOConfig(loss=loss, beta=kw["beta"], simpo_gamma=kw.get("simpo_gamma", 0.5), cpo_alpha=kw["cpo_alpha"])

        def theirs_fn():
            c = tr.concatenated_inputs(b, padding_value=tr.processing_class.pad_token_id)
            logits = tr.model(c["concatenated_input_ids"], attention_mask=c["concatenated_attention_mask"],
                              use_cache=False).logits
            labels = c["concatenated_labels"]
            avg = CPOTrainer.get_batch_logps(logits, labels, average_log_prob=loss == "simpo")
            n = len(SOFT_P)
            forward, backward = tr.cpo_loss(avg[:n], avg[n:])[0], tr.cpo_loss(avg[n:], avg[:n])[0]
            total = (SOFT_P * forward + (1 - SOFT_P) * backward).mean()
            if kw["cpo_alpha"]:  # NLL_p: each side's tokens weighted by its probability of being the better
                sums = -CPOTrainer.get_batch_logps(logits, labels, average_log_prob=False)
                counts = (labels[:, 1:] != -100).sum(-1)
                w = torch.cat([SOFT_P, 1 - SOFT_P])
                total = total + kw["cpo_alpha"] * (w * sums).sum() / (w * counts).sum()
            return total

        theirs = loss_and_grads(tr.model, theirs_fn)
        ours = loss_and_grads(tr.model, lambda: batch_loss(tr.model, ours_batch(tr, b, SOFT_P), None, cfg)[0])
        assert_same(ours, theirs)


def test_soft_orpo_is_the_expectation_of_trls_odds_ratio_term(trl_setup):
    tr = orpo_trainer(trl_setup, beta=0.25)
    b = trl_batch(tr)
    cfg = ORPOConfig(beta=0.25, sft_on="all")

    def theirs_fn():
        c = tr.concatenated_inputs(b, padding_value=tr.padding_value)
        logits = tr.model(c["concatenated_input_ids"], attention_mask=c["concatenated_attention_mask"],
                          use_cache=False).logits
        n = len(SOFT_P)
        avg = tr.get_batch_logps(logits, c["concatenated_labels"], average_log_prob=True)
        ratio_f, ratio_b = tr.odds_ratio_loss(avg[:n], avg[n:])[0], tr.odds_ratio_loss(avg[n:], avg[:n])[0]
        labels = torch.where(c["concatenated_attention_mask"] == 1, c["concatenated_input_ids"], -100)
        sums = -tr.get_batch_logps(logits, labels, average_log_prob=False)
        counts = (labels[:, 1:] != -100).sum(-1)
        w = torch.cat([SOFT_P, 1 - SOFT_P])
        return (w * sums).sum() / (w * counts).sum() - (SOFT_P * ratio_f + (1 - SOFT_P) * ratio_b).mean()

    theirs = loss_and_grads(tr.model, theirs_fn)
    ours = loss_and_grads(tr.model, lambda: orpo_batch_loss(tr.model, ours_batch(tr, b, SOFT_P), cfg)[0])
    assert_same(ours, theirs)


def test_soft_targets_a_tie_asks_for_no_gap():
    """At p = 0.5 every loss is symmetric in its gap, so its gradient at gap 0 is zero; at p > 0.5 it
    pulls chosen up. (TRL's label_smoothing = 0.5 would still ask SimPO for a gap γ.)"""
    for fn in (lambda x, p: reference_free_loss(x, torch.zeros_like(x), 2.0, "simpo", p, 1.0)[0],
               lambda x, p: reference_free_loss(x, torch.zeros_like(x), 0.3, "cpo", p)[0],
               lambda x, p: orpo_loss(x - 1.0, torch.full_like(x, -1.0), p)[0]):
        for p, sign in ((0.5, 0), (0.8, -1), (0.2, 1)):
            x = torch.zeros(1, requires_grad=True)
            fn(x, p).sum().backward()
            assert (x.grad.item() == pytest.approx(0.0, abs=1e-7)) if sign == 0 else (x.grad.item() * sign > 1e-3)


def test_soft_nll_weights_each_side_by_its_probability():
    lp = type("LP", (), {})()
    lp.tokens = torch.tensor([[-1.0, -1.0, -1.0], [-3.0, -3.0, 0.0]])
    lp.completion = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    lp.attended = torch.ones(2, 3)
    lp.n = 1
    assert soft_nll(lp, 1.0).item() == pytest.approx(1.0)  # chosen only: 3 tokens at 1 nat
    assert soft_nll(lp, 0.0).item() == pytest.approx(3.0)  # rejected only
    assert soft_nll(lp, 0.5).item() == pytest.approx((0.5 * 3 + 0.5 * 6) / (0.5 * 3 + 0.5 * 2))


# ---------------------------------------------------------------- the trainers on a tiny model


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    d = tmp_path_factory.mktemp("toy")
    return write_jsonl(d / "train.jsonl", toy_prefs(16)), write_jsonl(d / "heldout.jsonl", toy_prefs(16)[8:])


@pytest.mark.parametrize("loss", ["simpo", "cpo"])
def test_reference_free_dpo_losses_learn_the_toy_set(tiny_dir, toy, tmp_path, loss):
    beta = 2.0 if loss == "simpo" else 0.1
    result = train_dpo(DPOConfig(policy=str(tiny_dir), prefs=str(toy[0]), eval_file=str(toy[1]), loss=loss,
                                 beta=beta, simpo_gamma=1.0, output_dir=str(tmp_path), batch_size=8, max_steps=8,
                                 learning_rate=3e-3, eval_every=100, progress=False))
    rows = _log(tmp_path)
    # CPO's margin is on summed log-probs: the longer chosen replies start far below (β·Δ ≈ −7) and
    # climb; SimPO's per-token means start near 0 and cross it
    assert rows[-1]["eval_margin"] > rows[0]["margin"] + 0.5
    assert rows[-1]["eval_accuracy"] == 1.0 or loss == "cpo"
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert result["loss_type"] == loss


def test_orpo_learns_the_toy_set_and_imitates_the_chosen(tiny_dir, toy, tmp_path):
    result = train_orpo(ORPOConfig(policy=str(tiny_dir), prefs=str(toy[0]), eval_file=str(toy[1]),
                                   output_dir=str(tmp_path), batch_size=8, max_steps=8, learning_rate=3e-3,
                                   beta=1.0, eval_every=100, progress=False))
    rows = _log(tmp_path)
    assert rows[-1]["log_odds_ratio"] > rows[0]["log_odds_ratio"] + 0.1
    assert rows[-1]["nll"] < rows[0]["nll"] - 0.1  # the chosen replies grew likelier
    assert rows[-1]["eval_accuracy"] == 1.0 and result["steps"] == 8
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(tmp_path)  # a plain causal-LM dir


def test_cli_orpo_and_dpo_simpo_and_their_one_line_errors(tiny_dir, toy, tmp_path, capsys):
    from rlaif.cli import main

    assert main(["orpo", "--prefs", str(toy[0]), "--policy", str(tiny_dir), "--out", str(tmp_path / "o"),
                 "--steps", "1", "--batch-size", "4", "--beta", "0.2", "--sft-on", "all"]) == 0
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["sft_on"] == "all"
    assert main(["dpo", "--loss", "simpo", "--simpo-gamma", "0.8", "--prefs", str(toy[0]), "--policy",
                 str(tiny_dir), "--out", str(tmp_path / "s"), "--steps", "1", "--batch-size", "4"]) == 0
    capsys.readouterr()
    assert main(["dpo", "--loss", "simpo", "--reference", str(tiny_dir), "--prefs", str(toy[0]), "--policy",
                 str(tiny_dir), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "reference" in err and "reference-free" in err and len(err.strip().splitlines()) == 1
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "y", "rejected": "z", "p_chosen": 2}])
    assert main(["orpo", "--prefs", str(bad), "--policy", str(tiny_dir), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl:1" in err and "p_chosen" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b" / "model.safetensors").exists()


def test_orpo_gradient_flows_only_through_the_policy(tiny_dir, toy):
    """No reference anywhere: one model, and its log-probs are what the loss reads."""
    from transformers import AutoModelForCausalLM

    from rlaif.train.examples import read_pairs
    from rlaif.train.models import load_tokenizer
    from rlaif.train.pair_logps import CompletionPairs

    tok = load_tokenizer(str(tiny_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    batch = CompletionPairs(tok, read_pairs(toy[0])[0], 256)([0, 1])
    lp = pair_logps(model, batch)
    a_c, a_r = lp.chosen_rejected(average=True)
    assert torch.allclose(a_c, lp.sums[:2] / lp.counts[:2]) and (lp.counts > 0).all()
    assert (batch["completion_mask"].sum(-1) == lp.counts + batch["completion_mask"][:, 0]).all()
