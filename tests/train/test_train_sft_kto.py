"""SL-CAI supervised fine-tuning (completion-only loss) and KTO: equal to TRL 1.16's SFTTrainer and
KTOTrainer losses on the same batch, the prompt never a target, training moves the model the right
way (and the other way when KTO's labels are flipped), bad files are one clear line."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from train_fixtures import accelerate_launch, tiny_llama, tiny_tokenizer, write_jsonl

from rlaif.errors import UserError  # noqa: E402
from rlaif.train.encoding import encode  # noqa: E402
from rlaif.train.examples import UnusablePair, pad, parse_prompt_completion  # noqa: E402
from rlaif.train.kto import (KTOBatches, KTOConfig, Unpaired, completion_logps, kl_pairs,  # noqa: E402
                             kl_reference_point, kto_loss, read_kto, train_kto, unpaired_from_pair,
                             unpaired_from_score)
from rlaif.train.maths import sequence_logps  # noqa: E402
from rlaif.train.sft import SFTBatches, SFTConfig, completion_nll, read_sft, sft_loss, train_sft  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["cats", "tea", "maps", "rain", "bees", "jazz", "kites", "salt", "ink", "moss", "owls", "figs",
          "wool", "clay", "reef", "dune", "pears", "snow", "ants", "lamps"]


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "train_log.jsonl").read_text().splitlines()]


def chat(prompt: str, completion: str) -> dict:
    return {"prompt": [{"role": "user", "content": prompt}],
            "completion": [{"role": "assistant", "content": completion}]}


def sft_rows(topics, plain: bool = False) -> list[dict]:
    rows = [chat(f"tell me about {t}", f"sure. {t} are lovely, and that is all.") for t in topics]
    if plain:
        return [{"prompt": r["prompt"][0]["content"] + "\n", "completion": r["completion"][0]["content"]} for r in rows]
    return rows


def kto_rows(topics, flip: bool = False) -> list[dict]:
    """Desirable: a short reply; undesirable: a long one (both for every prompt)."""
    rows = []
    for t in topics:
        rows.append({**chat(f"say something on {t}", "ok."), "label": not flip})
        rows.append({**chat(f"say something on {t}", f"well, there is so much one could say about {t} here."),
                     "label": flip})
    return rows


@pytest.fixture(scope="module")
def trl_models():
    pytest.importorskip("trl")
    tok = tiny_tokenizer()
    yield tok, tiny_llama(tok, seed=0), tiny_llama(tok, seed=1)
    from accelerate.state import AcceleratorState  # TRL's TrainingArguments leave a global state behind

    AcceleratorState._reset_state(reset_partial_state=True)


def held_logps(model_dir, records) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ log p of each record's completion, its token count) under a saved model: scored with the shared
    `encode`/`sequence_logps`, independently of the trainers' loss code."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    enc = [encode(tok, e.prompt, e.completion, 512) for e in (parse_prompt_completion(r, "x") for r in records)]
    ids, mask = pad([e[0] for e in enc], tok.pad_token_id), pad([e[1] for e in enc], 0)
    att = (torch.arange(ids.shape[1])[None] < torch.tensor([len(e[0]) for e in enc])[:, None]).long()
    with torch.no_grad():
        logits = AutoModelForCausalLM.from_pretrained(model_dir).eval()(input_ids=ids, attention_mask=att).logits
    return sequence_logps(logits, ids, mask), mask[:, 1:].sum(-1)


def _rows_of(ids, mask, attention):
    return [(tuple(i[a.bool()].tolist()), tuple(m[a.bool()].tolist())) for i, m, a in zip(ids, mask, attention)]


# ---------------------------------------------------------------- SFT


@pytest.mark.parametrize("plain", [False, True])
def test_sft_loss_equals_trl(trl_models, plain, tmp_path):
    from datasets import Dataset
    from trl import SFTConfig as TRLSFTConfig
    from trl import SFTTrainer

    tok, policy, _ = trl_models
    # completions of different lengths: a per-sequence mean would differ from TRL's per-token mean
    pcs = [("tell me about cats", "sure. cats are lovely."), ("hi", "yo"), ("count", "a b c d e f g h i j k"),
           ("tell me about jazz", "jazz is fine.")]
    rows = [{"prompt": p + "\n", "completion": c} if plain else chat(p, c) for p, c in pcs]
    args = TRLSFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, completion_only_loss=True,
                        max_length=None, report_to=[], use_cpu=True, bf16=False)
    trainer = SFTTrainer(model=policy, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    batch = {k: v.cpu() for k, v in next(iter(trainer.get_train_dataloader())).items()}
    trainer.model.train()
    theirs = trainer.compute_loss(trainer.model, dict(batch)).item()

    ours_batch = SFTBatches(tok, [parse_prompt_completion(r, "x") for r in rows], 512)(list(range(4)))
    trl_mask = (batch["labels"] != -100).long()
    # the same sequences, and TRL's target tokens are exactly our completion tokens (minus the first position)
    ours_rows = sorted(_rows_of(ours_batch["input_ids"], ours_batch["completion_mask"], ours_batch["attention_mask"]))
    assert ours_rows == sorted(_rows_of(batch["input_ids"], trl_mask, batch["attention_mask"]))
    logits = policy(input_ids=ours_batch["input_ids"], attention_mask=ours_batch["attention_mask"]).logits
    ours = sft_loss(logits, ours_batch["input_ids"], ours_batch["completion_mask"]).item()
    print(f"sft plain={plain}: ours {ours:.8f} trl {theirs:.8f} diff {abs(ours - theirs):.2e}")
    assert abs(ours - theirs) <= 1e-5, (ours, theirs)
    nll, n = completion_nll(logits, ours_batch["input_ids"], ours_batch["completion_mask"])
    per_sequence_mean = (nll / n).mean().item()
    assert abs(per_sequence_mean - theirs) > 1e-4  # 10× the tolerance: the check tells the two averages apart


def test_sft_loss_ignores_prompt_targets_and_reads_every_completion_token():
    tok = tiny_tokenizer()
    model = tiny_llama(tok, seed=2)
    b = SFTBatches(tok, [parse_prompt_completion(r, "x") for r in sft_rows(["tea", "owls", "ink"])], 512)([0, 1, 2])
    with torch.no_grad():
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    base = sft_loss(logits, b["input_ids"], b["completion_mask"])
    # same logits, every prompt token's target replaced: identical loss
    prompt = (b["completion_mask"] == 0) & (b["attention_mask"] == 1)
    other = torch.where(prompt, (b["input_ids"] + 7) % len(tok), b["input_ids"])
    assert torch.equal(sft_loss(logits, other, b["completion_mask"]), base)
    # and the first and the last completion token of a row are targets
    for pick in (0, -1):
        pos = b["completion_mask"][0].nonzero()[pick].item()
        changed = b["input_ids"].clone()
        changed[0, pos] = (changed[0, pos] + 7) % len(tok)
        assert sft_loss(logits, changed, b["completion_mask"]).item() != pytest.approx(base.item(), abs=1e-6)
    # the completion tokens are exactly the rendered assistant turn
    ids, mask = b["input_ids"][0], b["completion_mask"][0]
    assert tok.decode(ids[mask.bool()]) == "sure. tea are lovely, and that is all.<|im_end|>\n"


def test_sft_lowers_the_completion_loss_on_held_out_prompts(tiny_dir, tmp_path):
    data = write_jsonl(tmp_path / "sl.jsonl", sft_rows(TOPICS[:16]))
    held = write_jsonl(tmp_path / "held.jsonl", sft_rows(TOPICS[16:]))
    out = tmp_path / "sft"
    result = train_sft(SFTConfig(policy=str(tiny_dir), data=str(data), eval_file=str(held), output_dir=str(out),
                                 batch_size=8, max_steps=20, learning_rate=1e-2, eval_every=100, progress=False))
    rows = _log(out)
    assert [r["step"] for r in rows] == list(range(1, 21)) and result["steps"] == 20
    assert rows[-1]["loss"] < rows[0]["loss"] - 1.0
    for name in ("summary.json", "manifest.json", "train_curves.png", "config.json", "model.safetensors"):
        assert (out / name).exists(), name

    # the held-out completions' mean log-prob per token rises (scored independently of the trainer)
    held_rows = sft_rows(TOPICS[16:])
    before, after = ((lp.sum() / n.sum()).item() for lp, n in (held_logps(d, held_rows) for d in (tiny_dir, out)))
    assert after > before + 1.0, (before, after)
    assert rows[-1]["eval_loss"] == pytest.approx(-after, abs=1e-4)  # in-training eval == the saved model


def test_sft_averages_per_token_over_the_whole_step(tiny_dir, tmp_path):
    """batch 4 × grad_accum 2 is the same optimisation as batch 8: the loss is Σ NLL over every
    completion token of the step / their number (TRL's num_items_in_batch), not a mean of micro-batch means."""
    data = write_jsonl(tmp_path / "sl.jsonl", sft_rows(TOPICS[:4]) + [chat(f"hi {t}", "yo") for t in TOPICS[4:8]])
    logs = []
    for bs, ga in ((8, 1), (4, 2)):
        out = tmp_path / f"b{bs}"
        train_sft(SFTConfig(policy=str(tiny_dir), data=str(data), output_dir=str(out), batch_size=bs, grad_accum=ga,
                            max_steps=3, learning_rate=3e-3, progress=False, save=False))
        logs.append(_log(out))
    for a, b in zip(*logs):
        assert b["loss"] == pytest.approx(a["loss"], abs=2e-5) and a["tokens"] == b["tokens"]


def test_bad_sft_file_is_one_line(tiny_dir, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("a", "b"), {"prompt": "hello"}])
    with pytest.raises(UserError, match=r"bad\.jsonl:2: missing field 'completion'") as err:
        train_sft(SFTConfig(policy=str(tiny_dir), data=str(bad), output_dir=str(tmp_path / "o"), progress=False))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "o").exists()
    # a completion holding a user turn is skipped and counted, not trained on
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [chat("a", "b"), {"prompt": "x", "completion": [
        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}])
    examples, skipped = read_sft(mixed)
    assert len(examples) == 1 and skipped == {"non_assistant_turn_in_completion": 1}


# ---------------------------------------------------------------- KTO


def test_kto_loss_equals_trl(trl_models, tmp_path):
    from datasets import Dataset
    from trl import KTOConfig as TRLKTOConfig
    from trl import KTOTrainer

    tok, m0, m1 = trl_models
    rows = [{**chat("say hi", "hello there, friend."), "label": True},
            {**chat("name a fruit", "a rock."), "label": False},
            {**chat("count to three", "one two three"), "label": True},
            {**chat("be kind", "no."), "label": False}]
    beta, wd, wu = 0.3, 1.3, 0.7
    ours_batch = KTOBatches(tok, read_kto(write_jsonl(tmp_path / "rows.jsonl", rows))[0], 512)(kl_pairs(range(4)))
    zs = []
    for policy, ref in ((m0, m1), (m1, m0)):  # the mismatched-pair KL is positive one way round
        args = TRLKTOConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, beta=beta, desirable_weight=wd,
                            undesirable_weight=wu, max_length=None, report_to=[], use_cpu=True, bf16=False)
        trainer = KTOTrainer(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows),
                             processing_class=tok)
        batch = {k: v.cpu() for k, v in next(iter(trainer.get_train_dataloader())).items()}
        trainer.model.train()
        theirs = trainer.compute_loss(trainer.model, dict(batch)).item()
        # TRL's batch is ours: same order (sequential), same sequences, same mismatched KL sequences
        keys = ("input_ids", "completion_mask", "attention_mask")
        for prefix in ("", "KL_"):
            assert _rows_of(*(ours_batch[prefix + k] for k in keys)) == _rows_of(*(batch[prefix + k] for k in keys))
        assert torch.equal(batch["label"], ours_batch["label"])

        with torch.no_grad():
            ref_logps, ref_kl = completion_logps(ref, ours_batch), completion_logps(ref, ours_batch, "KL_")
            kl = completion_logps(policy, ours_batch, "KL_")
        z = kl_reference_point(kl, ref_kl)
        losses, _ = kto_loss(completion_logps(policy, ours_batch), ref_logps, ours_batch["label"], z, beta, wd, wu)
        ours = losses.mean().item()
        print(f"kto z_ref={z.item():.4f}: ours {ours:.8f} trl {theirs:.8f} diff {abs(ours - theirs):.2e}")
        assert abs(ours - theirs) <= 1e-5, (ours, theirs)
        zs.append(z.item())
        if z > 0:  # the check sees the reference point: without it the loss is another number
            no_z = kto_loss(completion_logps(policy, ours_batch), ref_logps, ours_batch["label"], 0.0, beta, wd, wu)[0]
            assert abs(no_z.mean().item() - theirs) > 1e-4
    assert max(zs) > 0.05 and min(zs) == 0.0


def test_kl_pairs_rotate_completions_within_the_batch():
    assert kl_pairs([5, 2, 9]) == [(5, 9), (2, 5), (9, 2)]
    tok = tiny_tokenizer()
    ex = [Unpaired("p0\n", "c0", True, False), Unpaired("p1\n", "c1", False, False)]
    b = KTOBatches(tok, ex, 512)(kl_pairs([0, 1]))
    text = [tok.decode(r[a.bool()]) for r, a in zip(b["KL_input_ids"], b["KL_attention_mask"])]
    assert text == ["p0\nc1<|im_end|>", "p1\nc0<|im_end|>"]
    # an example's own sequence is `encode`'s, cuts included (prompt end kept, completion end cut)
    long = [Unpaired("a long prompt here\n", "and a long completion too", True, False)] * 2
    own = KTOBatches(tok, long, 16, 6).sequences([(0, 0)])
    ids, mask = encode(tok, long[0].prompt, long[0].completion, 16, 6)
    assert own["input_ids"][0].tolist() == ids and own["completion_mask"][0].tolist() == mask and len(ids) == 16
    assert kl_reference_point(torch.tensor([-3.0, -1.0]), torch.tensor([-1.0, -1.0])).item() == 0.0  # clamped at 0
    x = torch.tensor([-1.0, 0.0], requires_grad=True)
    assert kl_reference_point(x, torch.tensor([-2.0, -2.0])).requires_grad is False  # detached


def test_kl_pairs_never_pair_a_prompt_with_its_own_completion(tmp_path):
    """KTO from `pairs` data puts a pair's two sides next to each other; a rotation by one then
    pairs every second prompt with its own other side. The evaluation pairs (all of the eval file)
    and a training batch holding both sides of pairs must mismatch every prompt."""
    pairs = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": f"g{i}"}],
              "rejected": [{"role": "assistant", "content": f"b{i}"}], "p_chosen": 0.9} for i in range(5)]
    ex, _, _ = read_kto(write_jsonl(tmp_path / "pairs.jsonl", pairs))
    b = KTOBatches(tiny_tokenizer(), ex, 512)
    n = len(ex)
    plain = kl_pairs(range(n))  # the rotation alone: half the "mismatched" pairs are matched
    assert sum(ex[a].prompt == ex[c].prompt for a, c in plain) == n // 2
    for idx in (range(n), [3, 2, 0, 1, 7, 6, 9, 8]):
        kl = b.kl_pairs(idx)
        assert [a for a, _ in kl] == list(idx)  # the batch keeps its order
        assert sorted(c for _, c in kl) == sorted(idx)  # each completion used once
        assert not [(a, c) for a, c in kl if ex[a].prompt == ex[c].prompt], kl
    # distinct prompts: TRL's rotation, unchanged; one prompt only: nothing else to pair with
    distinct = KTOBatches(tiny_tokenizer(), [Unpaired(f"p{i}\n", f"c{i}", True, False) for i in range(3)], 512)
    assert distinct.kl_pairs([1, 2, 0]) == kl_pairs([1, 2, 0]) == [(1, 0), (2, 1), (0, 2)]
    one = KTOBatches(tiny_tokenizer(), [Unpaired("p\n", f"c{i}", i % 2 == 0, False) for i in range(3)], 512)
    assert one.kl_pairs([0, 1, 2]) == [(0, 0), (1, 1), (2, 2)]
    # a prompt holding more than half the batch: the fewest matched pairs left (2L − n)
    most = KTOBatches(tiny_tokenizer(), [Unpaired("p\n" if i < 3 else "q\n", f"c{i}", True, False) for i in range(4)],
                      512)
    assert sum(most.prompt_keys[a] == most.prompt_keys[c] for a, c in most.kl_pairs(range(4))) == 2


def test_kto_loss_signs():
    """Desirable: loss falls as r rises above z_ref; undesirable: falls as r drops below it."""
    r = torch.tensor([-2.0, 0.0, 2.0])
    for desirable in (True, False):
        losses, rewards = kto_loss(r, torch.zeros(3), torch.tensor([desirable] * 3), 0.5, 1.0, 1.5, 0.5)
        steps = torch.diff(losses)
        assert (steps < 0).all() if desirable else (steps > 0).all()
        lam = 1.5 if desirable else 0.5
        assert ((losses >= 0) & (losses <= lam)).all()
    assert torch.allclose(rewards, r)


def test_converters_from_scores_and_pairs(tmp_path):
    rec = {"prompt": "q", "completion": "a"}
    assert unpaired_from_score({**rec, "score": 0.5}, "f:1", 0.5).desirable is True
    assert unpaired_from_score({**rec, "score": 0.49}, "f:1", 0.5).desirable is False
    with pytest.raises(UserError, match=r"f:3: field 'score': expected a number in \[0, 1\]"):
        unpaired_from_score({**rec, "score": 7}, "f:3", 0.5)
    pair = {"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "good"}],
            "rejected": [{"role": "assistant", "content": "bad"}]}
    good, bad = unpaired_from_pair({**pair, "p_chosen": 0.9}, "f:1")
    assert (good.completion[0]["content"], good.desirable, bad.completion[0]["content"], bad.desirable) == \
        ("good", True, "bad", False)
    flipped = unpaired_from_pair({**pair, "p_chosen": 0.2}, "f:1")  # the rejected side is the better one
    assert [(u.completion[0]["content"], u.desirable) for u in flipped] == [("bad", True), ("good", False)]
    with pytest.raises(UnusablePair):
        unpaired_from_pair({**pair, "p_chosen": 0.55}, "f:1", margin=0.1)
    # whole files: the format is read from the first record; close pairs are skipped and counted
    path = write_jsonl(tmp_path / "pairs.jsonl", [{**pair, "p_chosen": p} for p in (1.0, 0.55, 0.8)])
    ex, skipped, fmt = read_kto(path, margin=0.1)
    assert fmt == "pairs" and len(ex) == 4 and skipped == {"within_pair_margin": 1}
    scored = write_jsonl(tmp_path / "scores.jsonl", [{**rec, "score": s} for s in (0.9, 0.1, 0.7)])
    ex, _, fmt = read_kto(scored, threshold=0.75)
    assert fmt == "scores" and [e.desirable for e in ex] == [True, False, False]


def test_pairs_unpair_as_trl_does(tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl.data_utils import unpair_preference_dataset

    pairs = [{"prompt": [{"role": "user", "content": f"q{i}"}], "chosen": [{"role": "assistant", "content": f"g{i}"}],
              "rejected": [{"role": "assistant", "content": f"b{i}"}]} for i in range(3)]
    ours, _, _ = read_kto(write_jsonl(tmp_path / "p.jsonl", pairs))
    theirs = unpair_preference_dataset(Dataset.from_list(pairs))
    key = lambda p, c, y: (json.dumps(p), json.dumps(c), bool(y))  # noqa: E731
    assert sorted(key(e.prompt, e.completion, e.desirable) for e in ours) == \
        sorted(key(r["prompt"], r["completion"], r["label"]) for r in theirs)


def test_bad_kto_file_is_one_line(tiny_dir, tmp_path, capsys):
    from rlaif.train.kto import main

    bad = write_jsonl(tmp_path / "kto.jsonl", [{**chat("a", "b"), "label": True}, {**chat("c", "d"), "label": 0.7}])
    with pytest.raises(UserError, match=r"kto\.jsonl:2: field 'label': expected true \(desirable\) or false"):
        train_kto(KTOConfig(policy=str(tiny_dir), data=str(bad), output_dir=str(tmp_path / "o"), progress=False))
    unlabeled = write_jsonl(tmp_path / "nolabel.jsonl", [chat("a", "b")])
    with pytest.raises(UserError, match=r"nolabel\.jsonl:1: field 'label'"):
        read_kto(unlabeled)
    with pytest.raises(UserError, match=r"nolabel\.jsonl:1: field 'label'"):
        read_kto(unlabeled, data_format="unpaired")
    # the module entry point: one line on stderr, exit 2, nothing written
    cfg = tmp_path / "kto.yaml"
    cfg.write_text(yaml.safe_dump({"policy": str(tiny_dir), "data": str(bad), "output_dir": str(tmp_path / "o2")}))
    assert main([str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "kto.jsonl:2: field 'label'" in err and "\n" not in err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()
    with pytest.raises(ValueError, match="batch_size must be at least 2"):
        KTOConfig(batch_size=1)


def _kto_margin(tiny_dir, out, topics) -> float:
    """Held-out mean of [log π − log π_ref](short) − [log π − log π_ref](long), whatever the labels."""
    rows = kto_rows(topics)  # short, long, short, long, ...
    ratio = held_logps(out, rows)[0] - held_logps(tiny_dir, rows)[0]
    return (ratio[0::2] - ratio[1::2]).mean().item()


@pytest.mark.parametrize("flip", [False, True])
def test_kto_moves_desirable_over_undesirable_on_held_out_prompts(tiny_dir, tmp_path, flip):
    data = write_jsonl(tmp_path / "kto.jsonl", kto_rows(TOPICS[:16], flip))
    held = write_jsonl(tmp_path / "held.jsonl", kto_rows(TOPICS[16:], flip))
    out = tmp_path / "kto"
    result = train_kto(KTOConfig(policy=str(tiny_dir), data=str(data), eval_file=str(held), output_dir=str(out),
                                 beta=0.1, batch_size=8, max_steps=8, learning_rate=3e-3, eval_every=100,
                                 progress=False))
    rows = _log(out)
    # step 1: the policy is the reference
    assert rows[0]["margin"] == pytest.approx(0.0, abs=1e-5) and rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert result["desirable"] == result["undesirable"] == 16 and result["weighted_balance"] == 1.0
    margin = _kto_margin(tiny_dir, out, TOPICS[16:])  # log-ratio of short minus long, whatever the labels
    if flip:
        assert margin < -1.0 and rows[-1]["eval_margin"] > 0.1  # rewards of *desirable* (now long) rise
    else:
        assert margin > 1.0 and rows[-1]["eval_margin"] > 0.1
    assert rows[-1]["eval_margin"] == pytest.approx(0.1 * abs(margin), rel=1e-3)  # eval == the saved model


@pytest.mark.heavy
@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["sft", "kto"])
def test_two_processes_match_one(trainer, tiny_dir, tmp_path):
    """Global batches split over 2 processes: the per-step token count (SFT) and the KL batch's
    rotation (KTO) are global, so the losses are one process's."""
    if trainer == "sft":
        rows = sft_rows(TOPICS[:6]) + [chat(f"hi {t}", "yo") for t in TOPICS[6:12]]
        cfg = SFTConfig(policy=str(tiny_dir), data=str(write_jsonl(tmp_path / "d.jsonl", rows)))
        keys, run = ("loss", "eval_loss"), train_sft
    else:
        cfg = KTOConfig(policy=str(tiny_dir), data=str(write_jsonl(tmp_path / "d.jsonl", kto_rows(TOPICS[:6]))))
        keys, run = ("loss", "kl", "margin", "eval_loss", "eval_margin"), train_kto
    cfg = cfg.model_copy(update=dict(eval_file=cfg.data, batch_size=4, grad_accum=2, max_steps=3, eval_every=3,
                                     eval_batch_size=4, learning_rate=3e-3, progress=False))
    run(cfg.model_copy(update={"output_dir": str(tmp_path / "one")}))
    cfg_file = tmp_path / "cfg.yaml"
    two = cfg.model_copy(update={"output_dir": str(tmp_path / "two")})
    cfg_file.write_text(yaml.safe_dump(two.model_dump(mode="json")))
    proc = accelerate_launch(["-m", f"rlaif.train.{trainer}", str(cfg_file)], 2, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1])["processes"] == 2
    a, b = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3]
    for ra, rb in zip(a, b):
        for k in keys:
            if k in ra:
                assert rb[k] == pytest.approx(ra[k], abs=1e-3, rel=1e-2), (ra["step"], k, ra[k], rb[k])
