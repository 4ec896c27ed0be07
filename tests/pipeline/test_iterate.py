"""Iterative RLAIF (rlaif/iterate.py, `rounds:` in a pipeline): prompt slices, pairs from the judge,
a reference other than the starting policy, resume mid-round, and two rounds moving further than one
with the rule judge (tests/support/rule_judge.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from train_fixtures import save_tiny, tiny_tokenizer, write_jsonl

from rlaif.iterate import (RoundsConfig, best_worst_preferences, pairwise_preferences,  # noqa: E402
                           round_prompts, sample_pairs)

ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["cats", "tea", "maps", "rain", "bees", "jazz", "kites", "salt", "ink", "moss", "owls", "figs",
          "wool", "clay", "reef", "dune", "pears", "snow", "ants", "lamps", "corn", "mist", "oak", "gold"]
SHORT, LONG = "ok.", "well, there is a lot to say here and i will say all of it now."


def msgs(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


# ---------------------------------------------------------------- pure parts


def test_round_prompts_are_fresh_slices_or_the_same_slice():
    pool = [{"id": str(i)} for i in range(10)]
    fresh = RoundsConfig(count=3, prompts_per_round=3)
    assert [[p["id"] for p in round_prompts(pool, fresh, k)] for k in (1, 2, 3)] == \
        [["0", "1", "2"], ["3", "4", "5"], ["6", "7", "8"]]
    same = RoundsConfig(count=3, prompts_per_round=3, fresh_prompts=False)
    assert {tuple(p["id"] for p in round_prompts(pool, same, k)) for k in (1, 2, 3)} == {("0", "1", "2")}


def test_sample_ids_follow_the_model_trained_into_a_folder(tmp_path):
    """A folder trained again in place (a new done key, or a trainer's new manifest) gives its
    samples new ids, with the same seeds; the same training leaves them as they were; a name
    that is no folder of ours keeps the ids it always had."""
    from rlaif.records import record_id
    from rlaif.stages.responses import ResponsesConfig, expand

    rc = ResponsesConfig(n=2, temperature=0.9, seed=7)
    prompts = [{"id": "p", "prompt": msgs("tell me about cats")}]
    folder = tmp_path / "policy"
    folder.mkdir()
    bare = expand(prompts, str(folder), rc)
    (folder / "manifest.json").write_text('{"stages": {"dpo": {"config": {"beta": 0.1}}}}')
    by_manifest = expand(prompts, str(folder), rc)
    (folder / "done.json").write_text('{"key": "aaaa"}\n')
    trained = expand(prompts, str(folder), rc)
    assert expand(prompts, str(folder), rc) == trained  # unchanged: the same ids
    (folder / "done.json").write_text('{"key": "bbbb"}\n')
    retrained = expand(prompts, str(folder), rc)
    ids = [[r["id"] for r in x] for x in (bare, by_manifest, trained, retrained)]
    assert len({i for row in ids for i in row}) == 8  # four models, two samples each, all distinct
    assert {tuple(r["seed"] for r in x) for x in (bare, by_manifest, trained, retrained)} == {
        tuple(r["seed"] for r in bare)}
    params = rc.model_dump(exclude={"pure"})
    assert [r["id"] for r in expand(prompts, "embedded:smollm2-135m-instruct", rc)] == [
        record_id("responses", prompts[0]["prompt"], "embedded:smollm2-135m-instruct", params, s) for s in (0, 1)]


def _sample(pid: str, k: int, text: str) -> dict:
    return {"id": f"{pid}-{k}", "prompt_id": pid, "prompt": msgs(pid), "sample": k, "response": text}


def test_best_worst_takes_the_extremes_and_skips_prompts_judged_alike():
    samples = [_sample("p", 0, "mid"), _sample("p", 1, "top"), _sample("p", 2, "low"), _sample("p", 3, "top2"),
               _sample("q", 0, "x"), _sample("q", 1, "y")]
    scores = {"p-0": 0.5, "p-1": 0.9, "p-2": 0.1, "p-3": 0.9, "q-0": 0.4, "q-1": 0.4}
    prefs, ties = best_worst_preferences(samples, scores)
    assert ties == 1 and len(prefs) == 1
    (pref,) = prefs
    # among equal best scores the first sample counts
    assert pref["chosen"][0]["content"] == "top" and pref["rejected"][0]["content"] == "low"
    assert pref["p_chosen"] == 1.0 and pref["score_chosen"] == 0.9 and pref["score_rejected"] == 0.1


def test_all_pairs_are_distinct_texts_and_hard_labels_drop_exact_ties():
    samples = [_sample("p", 0, "a"), _sample("p", 1, "b"), _sample("p", 2, "a "), _sample("p", 3, "c")]
    pairs = sample_pairs(samples)
    assert sorted((x["response_a"].strip(), x["response_b"].strip()) for x in pairs) == \
        [("a", "b"), ("a", "c"), ("b", "c")]
    labels = [{"id": "1", "p_chosen": 0.7}, {"id": "2", "p_chosen": 0.5}, {"id": "3", "p_chosen": 0.55}]
    hard, dropped = pairwise_preferences(labels, hard=True)
    assert dropped == 1 and [(r["p_chosen"], r["p_judge"]) for r in hard] == [(1.0, 0.7), (1.0, 0.55)]
    soft, dropped = pairwise_preferences(labels, hard=False)
    assert dropped == 0 and [r["p_chosen"] for r in soft] == [0.7, 0.5, 0.55]


# ---------------------------------------------------------------- a reference other than the start


def test_dpo_reference_can_be_another_model(tmp_path, one_thread):
    """With `reference: B`, the implied rewards at the first step are β (log π_A − log π_B) of each
    side, B's log-probs computed on their own; without it they are 0 (the policy is its reference)."""
    from rlaif.train.encoding import encode
    from rlaif.train.maths import sequence_logps
    from rlaif.train.dpo import DPOConfig, train_dpo
    from transformers import AutoModelForCausalLM

    a, b = save_tiny(tmp_path / "a", seed=1), save_tiny(tmp_path / "b", seed=2)
    prefs = write_jsonl(tmp_path / "prefs.jsonl", [
        {"prompt": msgs(f"about {t}"), "chosen": [{"role": "assistant", "content": SHORT}],
         "rejected": [{"role": "assistant", "content": LONG}], "p_chosen": 1.0} for t in TOPICS[:4]])
    tok = tiny_tokenizer()

    def logps(model_dir: Path, side: str) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
        text = SHORT if side == "chosen" else LONG
        out = []
        for t in TOPICS[:4]:
            ids, mask = encode(tok, msgs(f"about {t}"), [{"role": "assistant", "content": text}], 256)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([ids])).logits
            out.append(sequence_logps(logits, torch.tensor([ids]), torch.tensor([mask]))[0])
        return torch.stack(out)

    common = dict(policy=str(a), prefs=str(prefs), batch_size=4, max_steps=1, learning_rate=1e-6, beta=0.5,
                  progress=False, max_length=256)
    train_dpo(DPOConfig(**common, reference=str(b), output_dir=str(tmp_path / "ref_b")))
    row = json.loads((tmp_path / "ref_b" / "train_log.jsonl").read_text().splitlines()[0])
    expected_c = 0.5 * (logps(a, "chosen") - logps(b, "chosen")).mean().item()
    expected_r = 0.5 * (logps(a, "rejected") - logps(b, "rejected")).mean().item()
    assert abs(expected_c) > 3e-3 and abs(expected_c - expected_r) > 3e-3  # the two models differ
    assert row["rewards_chosen"] == pytest.approx(expected_c, abs=2e-6)
    assert row["rewards_rejected"] == pytest.approx(expected_r, abs=2e-6)
    train_dpo(DPOConfig(**common, reference=str(a), output_dir=str(tmp_path / "ref_a")))
    row = json.loads((tmp_path / "ref_a" / "train_log.jsonl").read_text().splitlines()[0])
    assert row["rewards_chosen"] == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- the pipeline


def _pipeline(tmp_path: Path, policy: Path, judge: Path | str, n_prompts: int, **rounds) -> Path:
    topics = [f"{t}{'' if i == 0 else i}" for i in range(2) for t in TOPICS][:n_prompts]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"tell me about {t}"} for t in topics])
    cfg = yaml.safe_load((ROOT / "pipelines" / "iterative_dpo.yaml").read_text())
    cfg["policy"].update(model=str(policy), batch_size=8, device="cpu")
    cfg["judge"].update(model=str(judge), batch_size=8, device="cpu")
    cfg["prompts"] = {"file": str(prompts), "limit": rounds.pop("limit")}
    cfg["rounds"].update(rounds)
    cfg["judge_check"] = {"enabled": False}  # the judge check's own tests cover it
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _rounds_files(out: Path) -> dict[str, bytes]:
    skip = ("manifest.json", "train_log.jsonl", "summary.json", "done.json", ".rlaif.lock", "failures.jsonl")
    return {str(f.relative_to(out)): f.read_bytes() for f in sorted((out / "rounds").rglob("*"))
            if f.is_file() and f.name not in skip and not f.name.endswith(".png")}


def test_iterative_pipeline_resumes_mid_round_with_identical_files(tmp_path, one_thread):
    """Tiny random policy and judge, 2 rounds: an uninterrupted run, then the same run killed
    (SIGKILL) once round 2 has started and run again in the same folder: every record, preference
    file, trained model and rounds.json is byte for byte the uninterrupted run's."""
    from rlaif.cli import main

    policy, judge = save_tiny(tmp_path / "policy", seed=3), save_tiny(tmp_path / "judge", seed=4, max_positions=4096)
    second = save_tiny(tmp_path / "second_judge", seed=5, max_positions=4096)
    pipe = _pipeline(tmp_path, policy, judge, 12, limit=8, count=2, prompts_per_round=4, samples=3, max_tokens=12,
                     train={"epochs": 1, "batch_size": 2, "max_length": 128, "learning_rate": 1e-3},
                     eval={"policy_prompts": 3, "samples": 2, "max_tokens": 10, "bootstrap": 100,
                           "independent_judge": {"model": str(second), "device": "cpu", "batch_size": 8}})
    out = tmp_path / "run"
    assert main(["run", str(pipe), "--out", str(out)]) == 0
    reference = _rounds_files(out)
    assert "rounds/rounds.json" in reference and "rounds/round_2/policy/model.safetensors" in reference
    info = json.loads(reference["rounds/rounds.json"])
    assert [r["round"] for r in info["rounds"]] == [0, 1, 2] and info["rounds"][0]["kl"] == 0.0
    assert all(r["reward"] is not None and r["independent_reward"] is not None for r in info["rounds"])
    assert info["rounds"][2]["policy_from"] == str(out / "rounds" / "round_1" / "policy")
    assert info["rounds"][2]["reference"] == info["rounds"][2]["policy_from"]  # reference: previous
    assert sorted(info["ranking"]) == ["round 1", "round 2", "start"]
    for name in ("round 1", "round 2"):  # the LC win rate travels with its CI, not as a bare point
        row = info["ranking"][name]
        lo, hi = row["lc_vs_baseline_ci95"]
        assert lo <= row["lc_vs_baseline"] <= hi and len(row["raw_vs_baseline_ci95"]) == 2
    report = (out / "report.html").read_text()
    rounds_part = report[report.index('id="iterative-rounds"'):]
    assert "Bradley" in rounds_part and "LC vs start" in rounds_part and "LC 95 % CI" in rounds_part
    assert json.loads((out / "metrics.json").read_text())["ranking"]["round 2"]["lc_vs_baseline_ci95"] == \
        row["lc_vs_baseline_ci95"]
    assert rounds_part.count("data:image/png;base64") >= 3  # reward vs KL, ratings, win-rate heatmap
    out.rename(tmp_path / "uninterrupted")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "run", str(pipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    marker = out / "rounds" / "round_2" / "responses" / "responses.jsonl"
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (out / "rounds" / "rounds.json").exists(), "the kill did not land in round 2"
    assert main(["run", str(pipe), "--out", str(out)]) == 0
    resumed = _rounds_files(out)
    assert sorted(resumed) == sorted(reference)
    assert [k for k in reference if resumed[k] != reference[k]] == []


def test_a_retrained_round_is_sampled_afresh_and_an_unchanged_rerun_redoes_nothing(tmp_path, one_thread, capsys,
                                                                                    monkeypatch):
    """Round 1's policy is trained again in place when `rounds.train` changes: what round 2 samples
    from it, and the evaluation of both rounds, must come from the new model (the records a fresh
    run with the new setting writes), not be resumed from the old one. Run again unchanged, the
    pipeline then trains nothing and writes nothing new."""
    from rlaif.cli import main

    policy, judge = save_tiny(tmp_path / "policy", seed=3), save_tiny(tmp_path / "judge", seed=4, max_positions=4096)

    def pipe(beta: float, name: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        return _pipeline(folder, policy, judge, 9, limit=6, count=2, prompts_per_round=3, samples=3, max_tokens=12,
                         train={"epochs": 2, "batch_size": 2, "max_length": 128, "learning_rate": 1e-2, "beta": beta},
                         eval={"policy_prompts": 2, "samples": 2, "max_tokens": 10, "rank": False})

    def records(out: Path, stage: str) -> dict[str, str]:
        path = out / "rounds" / stage
        return {r["id"]: r["response"] for r in map(json.loads, path.read_text().splitlines())}

    # the same relative output folder in two places: seeds name the model's path, so a fresh run
    # elsewhere samples what this one does
    here, elsewhere = tmp_path / "here", tmp_path / "elsewhere"
    here.mkdir(), elsewhere.mkdir()
    out, fresh = here / "run", elsewhere / "run"
    first, changed = pipe(0.1, "a"), pipe(1.0, "b")
    monkeypatch.chdir(here)
    assert main(["run", str(first), "--out", "run"]) == 0
    old = {s: records(out, s) for s in ("round_2/responses/responses.jsonl", "round_2/eval/samples.jsonl")}
    assert main(["run", str(changed), "--out", "run"]) == 0
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(changed), "--out", "run"]) == 0
    for stage, before in old.items():
        now, expected = records(out, stage), records(fresh, stage)
        assert not set(expected) & set(before), stage  # new ids: nothing taken from the old policy
        assert {i: now[i] for i in expected} == expected, stage  # what a fresh run samples
        assert list(expected.values()) != list(before.values()), stage  # and the texts did change
    assert (fresh / "rounds" / "rounds.json").read_bytes() == (out / "rounds" / "rounds.json").read_bytes()

    monkeypatch.chdir(here)
    files = _rounds_files(out)
    capsys.readouterr()
    assert main(["run", str(changed), "--out", "run"]) == 0
    said = capsys.readouterr().out
    assert said.count("already trained") == 2, said  # round 1 and round 2
    assert _rounds_files(out) == files


@pytest.mark.parametrize("pairing,trainer", [("all_pairs", "kto"), ("soft_pairs", "ipo")])
def test_pairwise_recipes_with_the_start_as_reference(pairing, trainer, tokenizer, tmp_path, one_thread):
    """Pairwise judging of every pair of samples, KTO or IPO, every round's reference the start.
    The judge: a tiny random model with the embedded tokenizer (the character-level one has no "A"/"B")."""
    from testkit import build_tiny_llama

    from rlaif.cli import main

    policy, judge = save_tiny(tmp_path / "policy", seed=3), tmp_path / "judge"
    model = build_tiny_llama(tokenizer, seed=4)
    model.config.max_position_embeddings = 4096  # labeler prompts quote whole conversations
    model.save_pretrained(judge)
    tokenizer.save_pretrained(judge)
    pipe = _pipeline(tmp_path, policy, judge, 10, limit=6, count=2, prompts_per_round=3, samples=3, max_tokens=10,
                     pairing=pairing, trainer=trainer, reference="start",
                     train={"epochs": 1, "batch_size": 2, "max_length": 128, "learning_rate": 1e-3},
                     eval={"policy_prompts": 2, "samples": 1, "max_tokens": 8, "rank": False})
    out = tmp_path / "run"
    assert main(["run", str(pipe), "--out", str(out)]) == 0
    rows = json.loads((out / "rounds" / "rounds.json").read_text())["rounds"]
    assert rows[2]["policy_from"] == str(out / "rounds" / "round_1" / "policy")
    assert rows[1]["reference"] == rows[2]["reference"] == str(policy)  # the start, both rounds
    labels = [json.loads(x) for x in (out / "rounds" / "round_1" / "label" / "labels.jsonl").read_text().splitlines()]
    prefs = [json.loads(x) for x in (out / "rounds" / "round_1" / "label" / "preferences.jsonl").read_text().splitlines()]
    assert labels and all(r["labels_by_order"]["ba"] is not None for r in labels)  # both orders judged
    if pairing == "all_pairs":
        assert prefs and all(r["p_chosen"] == 1.0 and r["p_judge"] != 0.5 for r in prefs)
    else:
        assert {r["id"]: r["p_chosen"] for r in prefs} == {r["id"]: r["p_chosen"] for r in labels}
    manifest = json.loads((out / "rounds" / "round_2" / "policy" / "manifest.json").read_text())
    config = manifest["stages"][trainer if trainer == "kto" else "dpo"]["config"]
    assert config["reference"] == str(policy) and config["policy"] == rows[2]["policy_from"]
    if trainer == "kto":
        assert config["data_format"] == "pairs"
    else:
        assert config["loss"] == "ipo"


def _short_start(tmp_path: Path) -> Path:
    """A tiny policy fine-tuned to answer "ok." a third of the time and a long sentence otherwise."""
    from rlaif.train.sft import SFTConfig, train_sft

    mix = [{"prompt": msgs(f"tell me about {t}"), "completion": [{"role": "assistant",
                                                                 "content": SHORT if i % 3 == 0 else LONG}]}
           for i, t in enumerate(TOPICS * 2)]
    out = tmp_path / "start"
    train_sft(SFTConfig(policy=str(save_tiny(tmp_path / "base")), data=str(write_jsonl(tmp_path / "mix.jsonl", mix)),
                        output_dir=str(out), batch_size=8, max_steps=60, learning_rate=1e-2, progress=False))
    return out


@pytest.mark.heavy
def test_two_rounds_move_the_rule_judges_quantity_further_than_one(tmp_path, one_thread, monkeypatch):
    """The rule judge's direct score favours fewer words. Checked quantity, exact (no sampling
    noise): the policy's log-odds of the short reply over the long one, mean over the held-out
    prompts; it must grow in round 1 and grow further in round 2. So must the pipeline's own sampled
    evaluation: the mean words of held-out samples fall in each round, and the KL to the start is > 0."""
    from rule_judge import RuleJudge

    from rlaif.backends import load_engine
    from rlaif.eval.round_eval import SampleScorer
    from rlaif.pipeline import Pipeline
    from rlaif.pipeline_config import held_out_prompts, load_pipeline

    # relative model paths: sampling seeds come from record ids, which name the model, so the run
    # is the same in any temporary folder. Measured: log-odds 5.7 -> 29.8 -> 50.6, mean words
    # 7.96 -> 7.19 -> 5.02, KL 0 -> 8.3 -> 10.9. (At learning rate 7e-4 round 1 saturates — every
    # sample "ok." — and round 2 has almost no pairs left to learn from.)
    monkeypatch.chdir(tmp_path)
    start = _short_start(Path("."))
    pipe = _pipeline(tmp_path, start, "rule-judge", 36, limit=24, count=2, prompts_per_round=12, samples=4,
                     max_tokens=72, temperature=1.0,
                     train={"epochs": 2, "batch_size": 4, "max_length": 160, "learning_rate": 4e-4, "beta": 0.1},
                     eval={"policy_prompts": 12, "samples": 4, "max_tokens": 72, "rank": False})
    _, cfg = load_pipeline(str(pipe))

    def loader(engine_cfg):
        return RuleJudge("shorter", 0.9, seed=0) if engine_cfg.model == "rule-judge" else load_engine(engine_cfg)

    p = Pipeline(cfg, Path("run"), loader=loader)
    assert p.run() == 0
    rows = json.loads((tmp_path / "run" / "rounds" / "rounds.json").read_text())["rounds"]
    held = held_out_prompts(cfg, "test", cfg.rounds.eval)

    def log_odds_short(model: str) -> float:
        scorer = SampleScorer(model)
        batch = [{"id": f"{i}{side}", "prompt": h["prompt"], "response": text, "finish_reason": "stop"}
                 for i, h in enumerate(held) for side, text in (("s", SHORT), ("l", LONG))]
        lp = {r["id"]: r["logp"] for r in scorer(batch)}
        return sum(lp[f"{i}s"] - lp[f"{i}l"] for i in range(len(held))) / len(held)

    odds = [log_odds_short(r["model"]) for r in rows]
    words = [r["mean_words"] for r in rows]
    print("log-odds short:", odds, "mean words:", words, "KL:", [r["kl"] for r in rows])
    assert rows[1]["preferences"] >= 6 and rows[2]["preferences"] >= 1
    assert odds[1] > odds[0] + 5, odds
    assert odds[2] > odds[1] + 5, odds
    assert words[2] < words[1] - 1.0 and words[1] < words[0], words
    assert rows[1]["kl"] > 0 and rows[2]["kl"] > 0


# ---------------------------------------------------------------- bad input


def test_rounds_below_one_is_exit_2_naming_the_field(tmp_path, capsys):
    from rlaif.cli import main

    pipe = _pipeline(tmp_path, "embedded:smollm2-135m-instruct", "embedded:smollm2-135m-instruct", 12, limit=8,
                     count=0)
    assert main(["run", str(pipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rounds.count" in err[0] and "greater than or equal to 1" in err[0]
    assert not (tmp_path / "out").exists()


def test_too_few_prompts_for_the_rounds_is_exit_2(tmp_path, capsys):
    from rlaif.cli import main

    pipe = _pipeline(tmp_path, "embedded:smollm2-135m-instruct", "embedded:smollm2-135m-instruct", 12, limit=8,
                     count=3, prompts_per_round=4, eval={"policy_prompts": 2})
    assert main(["run", str(pipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rounds needs 12 training prompts" in err[0]
