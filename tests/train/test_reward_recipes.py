"""Llama 2's reward recipes and RM ensembles on tiny random-weight models: the helpful/harmless
combination follows its rule at and around the threshold and on flagged prompts, with the stored
whitening; the graded margin equals its formula; rejection sampling keeps exactly the best sample
and fine-tunes on it; the ensemble reward equals mean − λ·std (or min) of its members, trained on
seeded bootstrap resamples; bad input is one line and exit 2."""

from __future__ import annotations

import json
import math
import statistics
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from testkit import run_cli  # noqa: E402
from train_fixtures import tiny_tokenizer, toy_prefs, write_jsonl

from rlaif.errors import UserError  # noqa: E402
from rlaif.train.reward_combine import (CombinedReward, Whitening, build_combination,  # noqa: E402
                                        calibration_pairs, combine, load_combination, whiten)
from rlaif.train.reward_ensemble import (EnsembleConfig, EnsembleReward, bootstrap_indices,  # noqa: E402
                                         conservative, member_offsets, parse_ensemble_spec, train_ensemble)
from rlaif.train.reward_model import (PairBatches, RewardConfig, RewardScorer, batch_loss,  # noqa: E402
                                      load_reward_model, strength_margin)

pytestmark = pytest.mark.usefixtures("one_thread")
WORDS = ["hi", "yo", "ok", "no", "up", "go", "be", "so"]


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def save_tiny_rm(path: Path, seed: int) -> Path:
    """A random-weight 1-layer Llama with a scalar head: a reward-model folder as train-rm writes one."""
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tok = tiny_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, num_labels=1,
                      initializer_range=0.5)
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def rms(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("rms")
    return [save_tiny_rm(root / f"rm{i}", seed=10 + i) for i in range(3)]


@pytest.fixture(scope="module")
def calibration(tmp_path_factory) -> Path:
    rows = [{"prompt": msgs(f"tell me about {w}"), "response": f"{w} is a word, {i} times."}
            for i, w in enumerate(WORDS)]
    rows.append({"prompt": msgs("and pairs?"), "chosen": [{"role": "assistant", "content": "sure."}],
                 "rejected": "no way at all"})
    return write_jsonl(tmp_path_factory.mktemp("cal") / "calibration.jsonl", rows)


# ---------------------------------------------------------------- combination


def test_combine_rule_at_and_around_the_threshold():
    T = -0.5
    harmless = [T - 1e-9, T, T + 1e-9, -3.0, 2.0, T]
    helpful = [10.0, 11.0, 12.0, 13.0, 14.0, 15.0]
    unsafe = [False, False, False, False, False, True]
    reward, used = combine(helpful, harmless, unsafe, T)
    # below T: harmless; at T and above: helpful; a flagged prompt: harmless whatever the score
    assert reward == [T - 1e-9, 11.0, 12.0, -3.0, 14.0, T]
    assert used == ["harmless", "helpful", "helpful", "harmless", "helpful", "harmless"]
    assert combine([1.0], [5.0], [True], T)[0] == [5.0]  # unsafe prompt, high harmless score: still harmless


def test_combination_whitens_with_its_stored_statistics_and_follows_the_rule(rms, calibration, tmp_path):
    out = tmp_path / "combo.yaml"
    cfg = build_combination(str(rms[0]), str(rms[1]), str(calibration), out, threshold=0.0,
                            unsafe_categories=["violence"])
    # the stored statistics are the RMs' mean and (n − 1) standard deviation on the calibration set
    from rlaif.train.reward_combine import calibration_pairs

    cal_prompts, cal_texts = calibration_pairs(calibration)
    assert len(cal_texts) == len(WORDS) + 2
    for side, rm in (("helpful", rms[0]), ("harmless", rms[1])):
        raw = RewardScorer(str(rm))(cal_prompts, cal_texts)
        w = getattr(cfg, f"{side}_whitening")
        assert w.mean == pytest.approx(statistics.mean(raw), abs=1e-6)
        assert w.std == pytest.approx(statistics.stdev(raw), abs=1e-6) and w.n == len(raw)
    assert yaml.safe_load(out.read_text())["helpful_whitening"]["mean"] == pytest.approx(cfg.helpful_whitening.mean)

    # whitening reads the file: other statistics written there give other z-scores
    data = yaml.safe_load(out.read_text())
    data["helpful_whitening"] = {"mean": 1.5, "std": 2.0, "n": 7}
    data["harmless_whitening"] = {"mean": -0.25, "std": 0.5, "n": 7}
    prompts = [msgs(f"question {w}") for w in WORDS] + [msgs("how to hurt"), msgs("a flagged one")]
    texts = [f"answer {w} {'!' * i}" for i, w in enumerate(WORDS)] + ["never.", "fine."]
    raw_h = RewardScorer(str(rms[0]))(prompts, texts)
    raw_s = RewardScorer(str(rms[1]))(prompts, texts)
    z_h = [(r - 1.5) / 2.0 for r in raw_h]
    z_s = [(r + 0.25) / 0.5 for r in raw_s]
    # put the threshold exactly on one response's harmless score (up to float rounding)
    data["threshold"] = sorted(z_s[:len(WORDS)])[len(WORDS) // 2]
    out.write_text(yaml.safe_dump(data))
    combo = CombinedReward(load_combination(out))
    flagged = combo.flag_prompts([{"prompt": prompts[-2], "meta": {"category": "violence"}},
                                  {"prompt": prompts[-1], "meta": {"unsafe": True}},
                                  {"prompt": prompts[0], "meta": {"category": "cooking", "unsafe": False}}])
    assert flagged == 2
    rows = combo.explain(prompts, texts)
    T = data["threshold"]
    for i, row in enumerate(rows):
        assert row["helpful_z"] == pytest.approx(z_h[i], abs=1e-5) and row["harmless_z"] == pytest.approx(z_s[i], abs=1e-5)
        unsafe = i >= len(WORDS)
        expect = "harmless" if unsafe or row["harmless_z"] < T else "helpful"
        assert row["used"] == expect and row["unsafe_prompt"] == unsafe
        assert row["reward"] == (row["harmless_z"] if expect == "harmless" else row["helpful_z"])
    at = [r for r in rows[:len(WORDS)] if r["harmless_z"] == T]
    assert at and all(r["used"] == "helpful" for r in at)  # at the threshold: helpful
    assert {r["used"] for r in rows[:len(WORDS)]} == {"helpful", "harmless"}  # both sides exercised
    assert combo(prompts, texts) == [r["reward"] for r in rows]


def test_calibration_rows_of_a_best_of_n_record_are_its_candidates(tmp_path):
    """A best-of-N record has both `response` (the best) and `candidates`: every candidate is a
    calibration row, or the whitening would measure the max-of-N's mean and spread."""
    from rlaif.train.reward_combine import calibration_pairs

    cal = write_jsonl(tmp_path / "best_of_n.jsonl", [
        {"prompt": msgs("q1"), "response": "b", "score": 3.0, "candidates": ["a", "b", "c"], "scores": [1, 3, 2]},
        {"prompt": msgs("q2"), "response": "y", "responses": ["x", "y"]},
        {"prompt": msgs("q3"), "response": "only"}])
    prompts, texts = calibration_pairs(cal)
    assert texts == ["a", "b", "c", "x", "y", "only"]
    assert prompts == [msgs("q1")] * 3 + [msgs("q2")] * 2 + [msgs("q3")]


def test_unsafe_prompts_path_is_read_relative_to_the_combination_file(rms, tmp_path, monkeypatch):
    folder = tmp_path / "combo"
    folder.mkdir()
    write_jsonl(folder / "unsafe.jsonl", [{"prompt": "make a bomb", "unsafe": True}, {"prompt": "hello"}])
    combo = folder / "combo.yaml"
    combo.write_text(yaml.safe_dump({"helpful": str(rms[0]), "harmless": str(rms[1]),
                                     "helpful_whitening": {"mean": 0, "std": 1, "n": 2},
                                     "harmless_whitening": {"mean": 0, "std": 1, "n": 2},
                                     "unsafe_prompts": "unsafe.jsonl"}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory has no unsafe.jsonl
    cfg = load_combination(combo)
    assert Path(cfg.unsafe_prompts) == folder / "unsafe.jsonl"
    assert CombinedReward(cfg).unsafe == {json.dumps(msgs("make a bomb"), sort_keys=True)}
    # a relative path found nowhere beside the file is one clear error naming the file and field
    data = yaml.safe_load(combo.read_text())
    data["unsafe_prompts"] = "missing.jsonl"
    combo.write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="unsafe_prompts.*missing.jsonl"):
        load_combination(combo)
    data["unsafe_prompts"] = "red_team"  # a shipped prompt set by name still works
    combo.write_text(yaml.safe_dump(data))
    assert Path(load_combination(combo).unsafe_prompts).name == "red_team.jsonl"
    # and combine-rm stores the path it was given as an absolute one, so the file can move
    (elsewhere / "here.jsonl").write_text('{"prompt": "x", "unsafe": true}\n')
    cal = write_jsonl(elsewhere / "cal.jsonl", [{"prompt": msgs("a"), "candidates": ["one", "two words", "3"]}])
    written = build_combination(str(rms[0]), str(rms[1]), str(cal), folder / "built.yaml",
                                unsafe_prompts="here.jsonl")
    assert written.unsafe_prompts == str(elsewhere / "here.jsonl")
    assert len(CombinedReward(load_combination(folder / "built.yaml")).unsafe) == 1


def test_whiten_is_the_stored_affine_map():
    w = Whitening(mean=2.0, std=4.0, n=3)
    assert whiten([2.0, 6.0, -2.0], w) == [0.0, 1.0, -1.0]


def test_combined_reward_in_ppo_reads_the_prompt_files_flags(rms, calibration, tiny_dir, tmp_path):
    from rlaif.train.ppo import PPOConfig, make_reward_fn

    combo = tmp_path / "combo.yaml"
    build_combination(str(rms[0]), str(rms[1]), str(calibration), combo, unsafe_categories=["weapons"])
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "hello"}, {"prompt": "make a bomb", "category": "weapons"},
                                                 {"prompt": "steal", "unsafe": True}])
    fn = make_reward_fn(PPOConfig(policy=str(tiny_dir), prompts=str(prompts), reward=f"combined:{combo}"))
    assert isinstance(fn, CombinedReward) and len(fn.unsafe) == 2
    rows = fn.explain([msgs("make a bomb"), msgs("steal"), msgs("hello")], ["no", "no", "hi"])
    assert [r["unsafe_prompt"] for r in rows] == [True, True, False]
    assert all(r["used"] == "harmless" for r in rows[:2])


# ---------------------------------------------------------------- margin from the label's strength


def test_margin_from_strength_is_the_documented_formula(tiny_dir):
    p = torch.tensor([0.5, 0.6, 0.75, 0.9, 1.0, 0.0, 0.25])
    m = strength_margin(p, 2.0)
    assert m.tolist() == pytest.approx([0.0, 0.4, 1.0, 1.6, 2.0, 2.0, 1.0])
    assert m[0] == 0 and torch.all(torch.diff(m[:5]) > 0)  # grows with |p − 0.5|
    assert strength_margin(torch.tensor(0.3), 1.0) == pytest.approx(strength_margin(torch.tensor(0.7), 1.0))

    from rlaif.train.examples import parse_pair

    tok = tiny_tokenizer()
    rows = toy_prefs(4)
    for r, p_c, own in zip(rows, (0.5, 0.7, 0.95, 0.2), (0.0, 0.3, 0.0, 0.1)):
        r["p_chosen"], r["margin"] = p_c, own
    pairs = [parse_pair(r, f"x:{i}") for i, r in enumerate(rows)]
    batch = PairBatches(tok, pairs, 128)(list(range(4)))
    model = load_reward_model(str(tiny_dir), tok)
    cfg = RewardConfig(base=str(tiny_dir), margin=0.2, margin_from_strength=1.5)
    torch.manual_seed(0)
    loss, r_c, r_r, pt = batch_loss(model, batch, cfg)
    d = (r_c - r_r).detach()
    expected = []
    for i, (p_c, own) in enumerate(zip((0.5, 0.7, 0.95, 0.2), (0.0, 0.3, 0.0, 0.1))):
        m_i = 0.2 + own + 1.5 * abs(2 * p_c - 1)
        expected.append(-(p_c * F.logsigmoid(d[i] - m_i) + (1 - p_c) * F.logsigmoid(-d[i] - m_i)))
    assert loss.item() == pytest.approx(torch.stack(expected).mean().item(), abs=1e-6)
    plain, *_ = batch_loss(model, batch, RewardConfig(base=str(tiny_dir), margin=0.2))
    assert plain.item() != pytest.approx(loss.item(), abs=1e-4)  # the option changes the loss


# ---------------------------------------------------------------- rejection sampling


@pytest.fixture(scope="module")
def engine(tiny_dir):
    from transformers import AutoModelForCausalLM

    from rlaif.backends.transformers_engine import TransformersEngine

    return TransformersEngine.from_pretrained_objects(AutoModelForCausalLM.from_pretrained(tiny_dir), tiny_tokenizer())


def vowel_reward(prompts, texts):
    return [sum(c in "aeiou" for c in t) / max(len(t), 1) for t in texts]


def test_rejection_sampling_keeps_exactly_the_best_sample_and_finetunes_on_it(engine, tiny_dir, tmp_path):
    from rlaif.train.best_of_n import BestOfNConfig
    from rlaif.train.rejection_sampling import finetune_on_best, sample_best
    from rlaif.train.sft import SFTConfig

    prompts = [{"id": w, "prompt": msgs(f"say {w}")} for w in WORDS]
    data, summary = sample_best(prompts, engine, vowel_reward, BestOfNConfig(n=5, max_tokens=8), tmp_path,
                                progress=False)
    kept = [json.loads(x) for x in data.read_text().splitlines()]
    samples = {json.loads(x)["id"]: json.loads(x) for x in (tmp_path / "samples" / "best_of_n.jsonl").read_text().splitlines()}
    assert len(kept) == len(WORDS) == summary["prompts"]
    for r in kept:
        cands = samples[r["id"]]["candidates"]
        scores = vowel_reward(None, cands)  # scored again, independently of the stage
        best = max(range(len(cands)), key=lambda i: (scores[i], -i))  # the max; the first of equals
        assert r["completion"] == [{"role": "assistant", "content": cands[best]}]
        assert r["score"] == pytest.approx(max(scores)) and r["prompt"] == samples[r["id"]]["prompt"]
        assert len(cands) == 5
    assert summary["mean_best_score"] >= summary["mean_sample_score"]
    result = finetune_on_best(data, SFTConfig(policy=str(tiny_dir), output_dir=str(tmp_path / "model"),
                                              batch_size=4, max_steps=3, learning_rate=1e-2, progress=False))
    assert result["steps"] == 3 and result["loss_end"] < result["loss_start"]
    assert (tmp_path / "model" / "model.safetensors").exists()


def test_rs_ft_from_the_command_line(rms, tiny_dir, tmp_path, capsys):
    from rlaif.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("say hi\nsay yo\nsay ok\n")
    out = tmp_path / "rs"
    assert main(["rs-ft", "--prompts", str(prompts), "--policy", str(tiny_dir), "--reward", f"rm:{rms[0]}",
                 "--n", "3", "--max-tokens", "6", "--device", "cpu", "--out", str(out), "--steps", "2",
                 "--batch-size", "3", "--set", "progress=false"]) == 0
    printed = capsys.readouterr().out
    assert "rs-ft: best of 3" in printed and "rs-ft (sft on the kept samples)" in printed
    kept = [json.loads(x) for x in (out / "rs_data.jsonl").read_text().splitlines()]
    scorer = RewardScorer(str(rms[0]))
    for r in kept:
        sample = next(json.loads(x) for x in (out / "samples" / "best_of_n.jsonl").read_text().splitlines()
                      if json.loads(x)["id"] == r["id"])
        scores = scorer([r["prompt"]] * 3, sample["candidates"])
        assert r["completion"][0]["content"] == sample["candidates"][scores.index(max(scores))]
    assert json.loads((out / "summary.json").read_text())["steps"] == 2


# ---------------------------------------------------------------- ensembles


def test_conservative_reward_equals_its_formula():
    s = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, -2.0], [2.0, 3.0, 0.0]])
    mean = [2.0, 1.0, 0.0]
    std = [math.sqrt(2 / 3), math.sqrt(2.0), math.sqrt(8 / 3)]  # population std over the 3 members
    got = conservative(s, "mean-std", 0.5)
    assert got.tolist() == pytest.approx([m - 0.5 * d for m, d in zip(mean, std)])
    assert conservative(s, "min").tolist() == [1.0, 0.0, -2.0]
    assert conservative(s, "mean-std", 0.0).tolist() == pytest.approx(mean)


def test_ensemble_reward_over_saved_members(rms, calibration):
    prompts = [msgs(f"q {w}") for w in WORDS]
    texts = [f"a {w} {i}" for i, w in enumerate(WORDS)]
    each = torch.tensor([RewardScorer(str(rm))(prompts, texts) for rm in rms], dtype=torch.float64)
    cal_prompts, cal_texts = calibration_pairs(calibration)
    m = torch.tensor([statistics.mean(RewardScorer(str(rm))(cal_prompts, cal_texts)) for rm in rms],
                     dtype=torch.float64)
    centred = each - m[:, None]  # each member minus its mean on the calibration set
    ens = parse_ensemble_spec(",".join(map(str, rms)) + f",lambda_std=2,calibration={calibration}")
    assert ens.mode == "mean-std" and ens.lambda_std == 2.0 and len(ens.members) == 3
    reward = EnsembleReward(ens)
    assert reward.offsets == pytest.approx(m.tolist(), abs=1e-6)
    expect = centred.mean(0) - 2.0 * torch.sqrt(((centred - centred.mean(0)) ** 2).mean(0))
    assert reward(prompts, texts) == pytest.approx(expect.tolist(), abs=1e-6)
    got_min = EnsembleReward(parse_ensemble_spec(f"{rms[0]},{rms[2]},min,calibration={calibration}"))(prompts, texts)
    assert got_min == pytest.approx(torch.minimum(centred[0], centred[2]).tolist(), abs=1e-6)
    with pytest.raises(UserError, match="'calibration': missing"):
        parse_ensemble_spec(f"{rms[0]},{rms[2]},min")
    with pytest.raises(UserError, match="lambda_std"):
        parse_ensemble_spec(f"{rms[0]},{rms[2]},lambda=1,calibration={calibration}")


def test_an_offset_on_one_member_does_not_change_the_ensemble(rms, calibration):
    """The BT loss fixes a member only up to an additive constant: the same member shifted by 5 is
    the same reward model, and must give the same conservative reward."""
    prompts = [msgs(f"q {w}") for w in WORDS]
    texts = [f"a {w} {'?' * i}" for i, w in enumerate(WORDS)]
    base = [RewardScorer(str(rm)) for rm in rms[:2]]

    def shifted(p, r):
        return [s + 5.0 for s in base[1](p, r)]

    for mode in ("min", "mean-std"):
        cfg = EnsembleConfig(members=[str(rm) for rm in rms[:2]], mode=mode, calibration=str(calibration))
        plain = EnsembleReward(cfg, scorers=base)(prompts, texts)
        moved = EnsembleReward(cfg, scorers=[base[0], shifted])(prompts, texts)
        assert moved == pytest.approx(plain, abs=1e-6)
        assert sorted(range(len(texts)), key=moved.__getitem__) == sorted(range(len(texts)), key=plain.__getitem__)
    # uncentred (as before), the same shift reorders the responses under `min`
    r0, r1 = torch.tensor(base[0](prompts, texts)), torch.tensor(base[1](prompts, texts))
    assert torch.minimum(r0, r1).argsort().tolist() != torch.minimum(r0, r1 + 5).argsort().tolist()
    assert member_offsets([base[0], shifted], calibration)[1] == pytest.approx(
        member_offsets(base, calibration)[1] + 5, abs=1e-6)


def test_bootstrap_subsets_are_seeded(tiny_dir, tmp_path):
    a, b = bootstrap_indices(16, 3, 0), bootstrap_indices(16, 3, 1)
    assert a == bootstrap_indices(16, 3, 0) and a != b and a != bootstrap_indices(16, 4, 0)
    assert len(a) == 16 and len(set(a)) < 16 and all(0 <= i < 16 for i in a)  # with replacement
    rows = toy_prefs(12)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = RewardConfig(base=str(tiny_dir), prefs=str(prefs), output_dir=str(tmp_path / "ens"), batch_size=4,
                       max_steps=1, progress=False, seed=5)
    summary = train_ensemble(cfg, 2, lambda_std=0.5)
    assert summary["k"] == 2 and len(summary["members"]) == 2
    for m in range(2):
        written = [json.loads(x) for x in (tmp_path / "ens" / f"member_{m}" / "bootstrap.jsonl").read_text().splitlines()]
        assert written == [rows[i] for i in bootstrap_indices(12, 5, m)]
        assert (tmp_path / "ens" / f"member_{m}" / "model.safetensors").exists()
    ens = parse_ensemble_spec(str(tmp_path / "ens"))
    assert isinstance(ens, EnsembleConfig) and ens.lambda_std == 0.5 and all(Path(p).is_dir() for p in ens.members)
    assert ens.mode == "mean-std" and ens.seed == 5 and len(ens.members) == 2
    # the offsets were measured on the whole preference file, both sides, and stored
    assert ens.offsets == pytest.approx(member_offsets([RewardScorer(p) for p in ens.members], prefs), abs=1e-6)
    assert summary["offsets"] == ens.offsets and ens.calibration == str(prefs.resolve())
    assert parse_ensemble_spec(f"{tmp_path / 'ens'},min").mode == "min"  # the spec overrides the folder's setting
    assert parse_ensemble_spec(f"{tmp_path / 'ens'},lambda_std=3").lambda_std == 3.0


def test_ppo_on_a_single_rm_and_an_ensemble_share_one_reward_vs_kl_plot(rms, tiny_dir, tmp_path, capsys):
    from rlaif.cli import main
    from rlaif.train.ppo import PPOConfig, train_ppo

    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": msgs(f"say {w}")} for w in WORDS[:4]])
    cal = write_jsonl(tmp_path / "cal.jsonl", [{"prompt": msgs("say hi"), "candidates": ["hi", "hello there", "yo"]}])
    for name, reward in (("single", f"rm:{rms[0]}"), ("ensemble", f"ensemble:{rms[0]},{rms[1]},min,calibration={cal}")):
        cfg = PPOConfig(policy=str(tiny_dir), prompts=str(prompts), output_dir=str(tmp_path / name), batch_size=4,
                        mini_batch_size=2, max_steps=2, max_new_tokens=4, reward=reward, progress=False, save=False)
        result = train_ppo(cfg)
        assert result["steps"] == 2 and result["reward"] == reward
    # the ensemble's logged reward is min over its members: never above the single RM it contains
    # on the first step (same policy, same seed, same samples)
    first = {n: json.loads((tmp_path / n / "train_log.jsonl").read_text().splitlines()[0]) for n in ("single", "ensemble")}
    assert first["ensemble"]["sample"] == first["single"]["sample"]
    assert first["ensemble"]["reward"] <= first["single"]["reward"] + 1e-6
    png = tmp_path / "compare.png"
    assert main(["plot-reward-kl", str(tmp_path / "single"), str(tmp_path / "ensemble"), "--out", str(png)]) == 0
    assert "2 runs" in capsys.readouterr().out and png.stat().st_size > 5000


# ---------------------------------------------------------------- bad input


def _one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_ensemble_with_fewer_than_two_members_is_exit_2(rms, tmp_path):
    prefs = write_jsonl(tmp_path / "prefs.jsonl", toy_prefs(4))
    line = _one_line_error(run_cli("train-rm-ensemble", "--prefs", prefs, "--k", "1", "--out", tmp_path / "ens"))
    assert "'k'" in line and "K >= 2" in line
    assert not (tmp_path / "ens").exists()  # nothing written
    prompts = tmp_path / "p.txt"
    prompts.write_text("say hi\n")
    line = _one_line_error(run_cli("best-of-n", "--prompts", prompts, "--reward", f"ensemble:{rms[0]},lambda_std=1",
                                   "--out", tmp_path / "bon", "--model", rms[0]))
    assert "K >= 2" in line and not (tmp_path / "bon").exists()


def test_combination_naming_a_missing_rm_folder_is_exit_2(rms, calibration, tmp_path):
    missing = tmp_path / "no_such_rm"
    line = _one_line_error(run_cli("combine-rm", "--helpful", missing, "--harmless", rms[1], "--calibration",
                                   calibration, "--out", tmp_path / "combo.yaml"))
    assert "'helpful'" in line and str(missing) in line
    assert not (tmp_path / "combo.yaml").exists()
    combo = tmp_path / "written.yaml"
    combo.write_text(yaml.safe_dump({"helpful": str(rms[0]), "harmless": "gone_rm",
                                     "helpful_whitening": {"mean": 0, "std": 1, "n": 2},
                                     "harmless_whitening": {"mean": 0, "std": 1, "n": 2}}))
    prompts = tmp_path / "p.txt"
    prompts.write_text("say hi\n")
    line = _one_line_error(run_cli("ppo", "--prompts", prompts, "--reward", f"combined:{combo}", "--policy", rms[0],
                                   "--out", tmp_path / "ppo"))
    assert "'harmless'" in line and "gone_rm" in line and not (tmp_path / "ppo").exists()


def test_train_rm_takes_the_strength_margin_from_the_command_line(tiny_dir, tmp_path, capsys):
    from rlaif.cli import main

    rows = toy_prefs(4, p=0.8)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", rows)
    assert main(["train-rm", "--prefs", str(prefs), "--base", str(tiny_dir), "--out", str(tmp_path / "rm"),
                 "--steps", "1", "--batch-size", "4", "--margin-from-strength", "1.5", "--set", "progress=false"]) == 0
    manifest = (tmp_path / "rm" / "manifest.json").read_text()
    assert '"margin_from_strength": 1.5' in manifest


def test_pipeline_rejection_sampling_stage_before_ppo(tokenizer, tmp_path, capsys):
    """rlaif_distilled with a rejection-sampling stage: best of K by this run's RM, SFT on the kept
    samples, and PPO starts from (and keeps as reference) that model; a second run trains nothing."""
    from rlaif.cli import main
    from testkit import ROOT, build_tiny_llama

    model_dir = tmp_path / "model"
    model = build_tiny_llama(tokenizer, seed=1)
    model.config.max_position_embeddings = 4096
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    out = tmp_path / "run"
    args = ["run", str(ROOT / "pipelines" / "rlaif_distilled.yaml"), "--out", str(out),
            "--set", "prompts.limit=4", "--set", "policy.batch_size=4", "--set", "judge.batch_size=4",
            "--set", f"policy.model={model_dir}", "--set", f"judge.model={model_dir}",
            "--set", "stages.responses.max_tokens=8", "--set", "stages.reward_model.epochs=1",
            "--set", "stages.reward_model.batch_size=2", "--set", "stages.evaluate=null",
            "--set", "stages.ppo.max_steps=1", "--set", "stages.ppo.batch_size=2", "--set", "stages.ppo.mini_batch_size=2",
            "--set", "stages.ppo.max_new_tokens=6",
            "--set", "stages.rejection_sampling={n: 3, max_tokens: 6, sft: {max_steps: 1, batch_size: 2}}"]
    assert main(args) == 0
    kept = [json.loads(x) for x in (out / "rejection_sampling_data" / "rs_data.jsonl").read_text().splitlines()]
    assert len(kept) == 4
    samples = [json.loads(x) for x in (out / "rejection_sampling_data" / "samples" / "best_of_n.jsonl").read_text().splitlines()]
    assert all(s["score"] == max(s["scores"]) and len(s["candidates"]) == 3 for s in samples)
    rs_manifest = json.loads((out / "rejection_sampling" / "manifest.json").read_text())
    assert rs_manifest["stages"]["sft"]["config"]["data"] == str(out / "rejection_sampling_data" / "rs_data.jsonl")
    ppo_manifest = json.loads((out / "ppo" / "manifest.json").read_text())
    assert ppo_manifest["stages"]["ppo"]["config"]["policy"] == str(out / "rejection_sampling")
    capsys.readouterr()
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "rejection_sampling: already trained" in printed and "ppo: already trained" in printed


# ---------------------------------------------------------------- learning check


def _length_pairs(topics: list[str], seed: int) -> list[dict]:
    import random

    rng = random.Random(seed)
    out = []
    for t in topics:
        short, long = f"{t}: ok.", f"{t} is a topic one could talk about at great length, so here is a long reply on {t}."
        a, b = (short, long) if rng.random() < 0.5 else (long, short)
        out.append({"prompt": msgs(f"tell me about {t}"), "response_a": a, "response_b": b})
    return out


@pytest.mark.heavy
def test_ensemble_with_strength_margin_learns_the_rule_judges_preference_and_the_control_does_not(tiny_dir, tmp_path):
    """Labels from the rule judge (tests/support/rule_judge.py: the shorter reply wins with p = 0.9) through the
    real labeler train a 2-member bootstrap ensemble with the strength margin; the checked quantity is
    the conservative reward's mean gap r(short) − r(long) on held-out prompts, against the same
    ensemble at its initial weights (trained with a learning rate of 1e-12). Measured (judge seeds
    0 / 1 / 2 for the control): rule arm +2.26; random-label control +0.07 / −0.19 / +0.15."""
    from rlaif.judge import Judge
    from rlaif.stages.labeler import run_label
    from rule_judge import RuleJudge

    topics = ["cats", "tea", "maps", "rain", "bees", "jazz", "kites", "salt", "ink", "moss", "owls", "figs",
              "wool", "clay", "reef", "dune", "pears", "snow", "ants", "lamps"]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", _length_pairs([f"{t}{i}" for i in range(5) for t in topics], 0))
    held = [f"{t}x" for t in topics]
    held_prompts = [msgs(f"tell me about {t}") for t in held]
    shorts = [f"{t}: ok." for t in held]
    longs = [f"{t} is a topic one could talk about at great length, so here is a long reply on {t}." for t in held]

    def gap(folder: Path) -> float:
        ens = EnsembleReward(parse_ensemble_spec(str(folder)))
        s, lo = ens(held_prompts, shorts), ens(held_prompts, longs)
        return sum(a - b for a, b in zip(s, lo)) / len(s)

    deltas = {}
    for rule in ("shorter", "random"):
        out = tmp_path / rule
        run_label(pairs, Judge(RuleJudge(rule, 0.9, seed=0), "harmless"), out / "label", progress=False)
        prefs = out / "label" / "preferences.jsonl"
        common = dict(base=str(tiny_dir), prefs=str(prefs), batch_size=8, max_steps=20, margin_from_strength=1.0,
                      progress=False, seed=0)
        train_ensemble(RewardConfig(**common, output_dir=str(out / "ens"), learning_rate=1e-3), 2)
        train_ensemble(RewardConfig(**{**common, "max_steps": 1}, output_dir=str(out / "init"), learning_rate=1e-12), 2)
        deltas[rule] = gap(out / "ens") - gap(out / "init")
        if rule == "shorter":
            rows = [json.loads(x) for x in prefs.read_text().splitlines()]
            assert all(len(r["chosen"][0]["content"]) < len(r["rejected"][0]["content"]) for r in rows)
    assert deltas["shorter"] > 1.0, deltas
    assert abs(deltas["random"]) < 0.6, deltas


@pytest.mark.heavy
def test_rejection_sampling_learns_the_rule_judges_preference_and_the_control_does_not(tmp_path):
    """A tiny policy first fine-tuned to answer "ok." about a third of the time and a long sentence
    otherwise; rejection sampling (best of 8 by the rule judge's direct score through the real
    labeler, which favours fewer words) then SFT for 10 steps. The checked quantity is the share of
    short (< 6 words) replies among 8 samples on each of 20 prompts. Here (fixed engine names, so
    fixed sampling seeds): rule arm +0.60, random-label control −0.08. With the sampling seeds drawn
    anew (15 runs, judge seeds 1-4): rule +0.53 to +0.66, control −0.23 to +0.13 — SFT on its own
    samples sharpens the policy a little whichever samples are kept, hence the control's spread."""
    from train_fixtures import save_tiny
    from rule_judge import RuleJudge

    from rlaif.config import EngineConfig
    from rlaif.constitution import load_constitution
    from rlaif.judge import Judge
    from rlaif.train.rewards import direct_reward
    from rlaif.train.best_of_n import BestOfNConfig, best_of_n
    from rlaif.train.rejection_sampling import finetune_on_best, sample_best
    from rlaif.train.sft import SFTConfig, train_sft

    topics = ["cats", "tea", "maps", "rain", "bees", "jazz", "kites", "salt", "ink", "moss", "owls", "figs",
              "wool", "clay", "reef", "dune", "pears", "snow", "ants", "lamps"]
    short, long = "ok.", "well, there is a lot to say here and i will say all of it now."
    mix = [{"prompt": msgs(f"tell me about {t}"), "completion": [{"role": "assistant", "content": short if i % 3 == 0 else long}]}
           for i, t in enumerate(topics * 3)]
    train_sft(SFTConfig(policy=str(save_tiny(tmp_path / "base")), data=str(write_jsonl(tmp_path / "mix.jsonl", mix)),
                        output_dir=str(tmp_path / "start"), batch_size=8, max_steps=60, learning_rate=1e-2, progress=False))
    prompts = [{"prompt": msgs(f"tell me about {t}")} for t in topics]

    def engine(model_dir: Path):
        """A fixed engine name: best-of-N's sampling seeds come from it, so every run samples alike."""
        from transformers import AutoModelForCausalLM

        from rlaif.backends.transformers_engine import TransformersEngine

        return TransformersEngine.from_pretrained_objects(AutoModelForCausalLM.from_pretrained(model_dir),
                                                          tiny_tokenizer(), EngineConfig(model=model_dir.name, device="cpu"))

    def short_share(model_dir: Path) -> float:
        eng = engine(model_dir)
        try:
            out = best_of_n(prompts, eng, lambda p, t: [0.0] * len(t),
                            BestOfNConfig(n=8, max_tokens=40, temperature=1.0, seed=123))
        finally:
            eng.close()
        texts = [c for r in out for c in r["candidates"]]
        return sum(len(c.split()) < 6 for c in texts) / len(texts)

    before = short_share(tmp_path / "start")
    assert 0.2 < before < 0.6  # the starting policy says both
    deltas = {}
    for rule in ("shorter", "random"):
        eng = engine(tmp_path / "start")
        try:
            reward = direct_reward(Judge(RuleJudge(rule, 0.9, seed=1), load_constitution("harmless")))
            data, _ = sample_best(prompts, eng, reward, BestOfNConfig(n=8, max_tokens=40, temperature=1.0),
                                  tmp_path / rule, progress=False)
        finally:
            eng.close()
        finetune_on_best(data, SFTConfig(policy=str(tmp_path / "start"), output_dir=str(tmp_path / rule / "model"),
                                         batch_size=4, max_steps=10, learning_rate=3e-3, progress=False))
        deltas[rule] = short_share(tmp_path / rule / "model") - before
    assert deltas["shorter"] > 0.35, deltas
    assert deltas["random"] < 0.25 and deltas["shorter"] - deltas["random"] > 0.3, deltas
