"""Model roles: policy, critic and judge as separate engines, each stage sent to its own; the
evaluation's held-out prompts; bad role blocks and flags refused with one line."""

import json
from pathlib import Path

import pytest
import yaml

from rlaif.cli import main
from rlaif.config import EngineConfig
from rlaif.errors import UserError
from rlaif.records import read_jsonl
from rlaif.roles import Engines, resolve_roles
from testkit import ROOT, build_tiny_llama, run_cli

SIZES = ["--set", "prompts.limit=3", "--set", "stages.responses.max_tokens=6",
         "--set", "stages.critique.rounds=1", "--set", "stages.critique.critique_max_tokens=6",
         "--set", "stages.critique.revision_max_tokens=6", "--set", "stages.reward_model=null",
         "--set", "stages.dpo.epochs=1", "--set", "stages.dpo.batch_size=2",
         "--set", "stages.evaluate.human=none", "--set", "stages.evaluate.policy_prompts=2",
         "--set", "stages.evaluate.max_tokens=6"]


def save_tiny(path: Path, tokenizer, seed: int) -> Path:
    model = build_tiny_llama(tokenizer, seed=seed)
    model.config.max_position_embeddings = 4096  # labeler prompts quote whole conversations
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def three_models(tmp_path_factory, tokenizer) -> dict:
    root = tmp_path_factory.mktemp("roles")
    return {role: save_tiny(root / role, tokenizer, seed) for seed, role in enumerate(("policy", "critic", "judge"), 11)}


def test_each_stage_goes_to_its_own_role(three_models, tmp_path):
    out = tmp_path / "run"
    roles = [f"--{role}={path}" for role, path in three_models.items()]
    assert main(["run", "cai_harmless", "--out", str(out), *SIZES, *roles]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {r: metrics["roles"][r]["model"] for r in three_models} == {r: str(p) for r, p in three_models.items()}
    assert not metrics["judge_is_policy"]

    # what each engine itself counted: the requests of the stages that belong to its role, exactly
    usage = metrics["role_usage"]
    responses = read_jsonl(out / "responses" / "responses.jsonl")
    chains = read_jsonl(out / "critique" / "chains.jsonl")
    start = read_jsonl(out / "evaluate" / "policy_start.jsonl")
    assert usage["policy"]["requests"] == len(responses) + len(start) == 3 * 2 + 2
    assert usage["critic"]["requests"] == 2 * sum(len(c["rounds"]) for c in chains) == 2 * 3
    checks = read_jsonl(out / "judge_check" / "labels.jsonl")
    labels = read_jsonl(out / "label" / "labels.jsonl")
    wins = read_jsonl(out / "evaluate" / "win_rate_labels.jsonl")
    pairwise = 2 * (len(checks) + len(labels) + len(wins))  # both orders of every pair
    direct = usage["judge"]["requests"] - pairwise  # harmless-rate scores: first digit (+ "0" after "1")
    assert 2 * len(wins) <= direct <= 4 * len(wins)

    # and the records name the model that wrote them
    assert {r["model"] for r in responses} == {str(three_models["policy"])}
    assert {r["labeler"]["model"] for r in labels} == {str(three_models["judge"])}
    assert metrics["policy"]["judge"].endswith(str(three_models["judge"]))


def test_legacy_engine_block_serves_every_role_and_the_report_says_the_judge_is_the_policy(three_models, tmp_path):
    pipeline = tmp_path / "old.yaml"
    pipeline.write_text(yaml.safe_dump({
        "name": "old", "engine": {"kind": "transformers", "model": str(three_models["policy"]), "batch_size": 4},
        "prompts": {"file": "red_team", "limit": 3},
        "stages": {"responses": {"n": 2, "max_tokens": 6}, "label": {"pairs": ["samples"]}}}))
    out = tmp_path / "run"
    assert main(["run", str(pipeline), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["judge_is_policy"] and metrics["roles"]["judge"]["defaulted_to"] == "engine"
    assert metrics["roles"]["policy"]["same_engine_as"] == ["critic", "judge"]
    html = (out / "report.html").read_text()
    assert html.index("The judge is the policy model") < html.index("<nav>")


def test_roles_default_and_share_one_engine():
    policy = EngineConfig(model="embedded:smollm2-135m-instruct")
    judge = EngineConfig(kind="openai", model="big", base_url="http://user:secret@127.0.0.1:9/v1")
    configs, defaulted = resolve_roles(policy, None, judge)
    assert configs["critic"] is policy and defaulted == {"critic": "policy"}
    described = Engines(configs, defaulted).describe()
    assert described["critic"]["same_engine_as"] == ["policy"]
    assert "secret" not in json.dumps(described) and described["judge"]["base_url"] == "http://127.0.0.1:9/v1"
    configs, defaulted = resolve_roles(None, None, None)
    assert defaulted == {"policy": "default", "critic": "policy", "judge": "policy"}


def test_held_out_prompts_never_overlap_training(tmp_path):
    from rlaif.pipeline_config import PipelineConfig
    from rlaif.prompts_io import held_out_prompts
    from rlaif.prompts_io import read_prompts

    cfg = PipelineConfig.model_validate({"name": "x", "prompts": {"file": "red_team", "limit": 100},
                                         "stages": {"evaluate": {"policy_prompts": 8}}})
    training = {p["id"] for p in read_prompts("red_team")[:100]}
    held = held_out_prompts(cfg)
    assert len(held) == 8 and not training & {p["id"] for p in held}
    with pytest.raises(UserError, match="only 3 held-out prompts are left"):
        held_out_prompts(cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"limit": 108})}))
    with pytest.raises(UserError, match="prompts.limit is unset"):
        held_out_prompts(cfg.model_copy(update={"prompts": cfg.prompts.model_copy(update={"limit": None})}))
    # a held-out file of its own: prompts that are also training prompts are dropped
    own = tmp_path / "held.jsonl"
    rows = [p["prompt"] for p in read_prompts("red_team")[:5]] + ["a new question one", "a new question two"]
    own.write_text("".join(json.dumps({"prompt": r}) + "\n" for r in rows))
    cfg = cfg.model_copy(update={"stages": cfg.stages.model_copy(update={
        "evaluate": cfg.stages.evaluate.model_copy(update={"prompts": str(own), "policy_prompts": 2})})})
    assert [p["prompt"][0]["content"] for p in held_out_prompts(cfg)] == ["a new question one", "a new question two"]


def test_trained_policy_is_served_like_the_starting_one():
    from rlaif.eval.policy_eval import trained_policy_config

    policy = EngineConfig(model="embedded:smollm2-135m-instruct", dtype="bfloat16", system_prompt="Be brief.",
                          batch_size=5, device="cpu")
    trained = trained_policy_config(policy, Path("/runs/x/dpo"))
    assert trained.model == "/runs/x/dpo"
    assert trained.model_dump(exclude={"model"}) == policy.model_dump(exclude={"model"})


@pytest.mark.parametrize("args, expected", [
    (["--set", "judge.kind=llama"], "field judge.kind"),
    (["--set", "critic.kind=gpt"], "field critic.kind"),
    (["--require-judge-accuracy", "0.5"], "--require-judge-accuracy 0.5: expected a number in (0.5, 1]"),
    (["--require-judge-accuracy", "1.2"], "--require-judge-accuracy 1.2: expected a number in (0.5, 1]"),
    (["--set", "policy.kind=openai", "--set", "policy.model=x"], "policy.kind is 'openai', but this pipeline trains"),
])
def test_bad_role_input_is_one_line_and_exit_2(args, expected, tmp_path):
    out = tmp_path / "run"
    res = run_cli("run", "cai_harmless", "--out", out, *args)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], res.stderr
    assert not (out / "responses").exists()


def test_judge_check_command_refuses_a_bad_threshold(tmp_path):
    res = run_cli("judge-check", "--judge", "embedded:smollm2-135m-instruct", "--constitution", "concise",
                  "--require-judge-accuracy", "0.3", "--out", tmp_path / "jc")
    assert res.returncode == 2 and res.stderr.count("\n") == 1
    assert "(0.5, 1]" in res.stderr and not (tmp_path / "jc").exists()


@pytest.mark.heavy
@pytest.mark.slow
def test_policy_on_transformers_with_a_judge_behind_a_real_openai_server(three_models, llama_server, tmp_path):
    """The RLAIF setup the roles exist for: the policy trains locally, the judge is a server
    (llama-cpp-python's OpenAI-compatible server with the embedded GGUF).

    The harmless constitution here keeps 4 of its 30 check pairs: each pair is two long judge prompts
    through llama.cpp (about 1 s each on 2 cores), and the judge check on all 30 took 64 of the
    test's 73 s; the routing under test is the same for 4 pairs as for 30."""
    constitution = yaml.safe_load((ROOT / "constitutions" / "harmless.yaml").read_text())
    constitution["check_pairs"] = constitution["check_pairs"][:8:2]  # 4 pairs, 4 principles
    constitution_file = tmp_path / "harmless-4-checks.yaml"
    constitution_file.write_text(yaml.safe_dump(constitution, sort_keys=False))
    out = tmp_path / "run"
    assert main(["run", "cai_harmless", "--out", str(out), *SIZES, f"--policy={three_models['policy']}",
                 "--constitution", str(constitution_file),
                 "--judge", "openai:smollm2", "--set", f"judge.base_url={llama_server}",
                 "--set", "judge.concurrency=2", "--set", "judge.timeout=120"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["roles"]["judge"] == {"engine": "openai", "model": "smollm2", "base_url": llama_server,
                                         "api_key_env": "OPENAI_API_KEY"}
    checks = read_jsonl(out / "judge_check" / "labels.jsonl")
    assert metrics["judge_check"]["pairs"] == len(checks) == 4
    assert {r["labeler"]["engine"] for r in checks} == {"openai"}
    assert metrics["role_usage"]["judge"]["requests"] > 0
    labels = read_jsonl(out / "label" / "labels.jsonl")
    assert labels and {r["labeler"]["engine"] for r in labels} == {"openai"}
    assert all(0 <= r["p_a"] <= 1 for r in labels)
    assert (out / "dpo" / "config.json").exists() and metrics["policy"]["prompts"] == 2


def test_another_judge_in_the_same_folder_labels_afresh(tmp_path):
    from rlaif.constitution import load_constitution
    from rlaif.eval.judge_check import run_judge_check
    from rlaif.judge import Judge
    from rule_judge import RuleJudge

    concise = load_constitution("concise")
    first = run_judge_check(Judge(RuleJudge("shorter", accuracy=0.99), concise), tmp_path, progress=False)
    again = RuleJudge("shorter", accuracy=0.99)
    assert run_judge_check(Judge(again, concise), tmp_path, progress=False)["accuracy"] == first["accuracy"]
    assert again.counters["option_requests"] == 0  # the same judge resumes: nothing asked again
    coin = RuleJudge("random", accuracy=0.99)
    second = run_judge_check(Judge(coin, concise), tmp_path, progress=False)
    assert coin.counters["option_requests"] == 2 * len(concise.check_pairs)  # not the first judge's labels
    assert first["status"] == "ok" and second["status"] == "at_chance"
