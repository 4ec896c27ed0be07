"""The Ray executor (`--executor ray`) on a local Ray cluster of 2 CPUs, started once for the module:
labels (through the CLI) and generations byte-identical to the in-process runner on a tiny random
model; per-record failures kept; a worker killed mid-run costs nothing; a driver killed mid-run
resumes to the same bytes; a missing extra and an unreachable address are one line and exit 2.
The vLLM-on-GPU path is marked gpu (not run on CPU machines)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the rlaif-kit[ray] extra is not installed")

from ray import cloudpickle  # noqa: E402

from rlaif.config import EngineConfig  # noqa: E402
from rlaif.errors import RequestFailed  # noqa: E402
from rlaif.executors import ExecutorConfig, RemoteEngine, use_executor  # noqa: E402
from rlaif.runner import run_stage  # noqa: E402
from testkit import ROOT, run_cli  # noqa: E402

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's own process() functions reach the actors

RAY = ExecutorConfig(kind="ray", actors=2, block_records=4)  # one batch of 4 a block: results stream back
WORDS = "the a cat dog safe help harm answer question please sorry cannot will should kind".split()


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _pairs(n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    say = lambda k: " ".join(rng.choice(WORDS) for _ in range(k))  # noqa: E731
    return [{"prompt": f"q{i}: {say(10)}", "response_a": say(12 + i % 5), "response_b": say(20 - i % 7)}
            for i in range(n)]


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.heavy
def test_labels_and_generations_equal_the_local_runner(tmp_path, tiny_model_dir):
    from rlaif.backends import load_engine
    from rlaif.constitution import load_constitution
    from rlaif.judge import Judge, make_config
    from rlaif.stages.labeler import LabelConfig, run_label
    from rlaif.stages.responses import ResponsesConfig, expand, make_process

    cfg = EngineConfig(model=str(tiny_model_dir), device="cpu")
    pairs = _write(tmp_path / "pairs.jsonl", _pairs(24))
    harmless = load_constitution("harmless")
    lcfg = make_config(LabelConfig, mode="pairwise", debias=True, seed=0)
    rcfg = ResponsesConfig(n=2, max_tokens=12, temperature=0.8, seed=3)
    prompts = [{"id": f"p{i}", "prompt": [{"role": "user", "content": f"tell me about {w}"}]}
               for i, w in enumerate(WORDS[:6])]

    def generate(out: Path, engine):
        run_stage("responses", expand(prompts, engine.model, rcfg), make_process(engine, rcfg), out / "gen",
                  config=rcfg, batch_size=4, progress=False)

    local = load_engine(cfg)
    try:
        run_label(pairs, Judge(local, harmless, lcfg), tmp_path / "local" / "label", batch_size=4, progress=False)
        generate(tmp_path / "local", local)
    finally:
        local.close()
    cli = run_cli("label", "--pairs", pairs, "--judge", tiny_model_dir, "--device", "cpu", "--batch-size", 4,
                  "--out", tmp_path / "ray" / "label", "--executor", "ray", "--ray-address", GCS(), "--ray-actors", 1, timeout=120)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert "label: 24 new, 0 already done, 0 failed" in cli.stdout
    with use_executor(ExecutorConfig(kind="ray", actors=1)):
        generate(tmp_path / "ray", RemoteEngine(cfg))
    for name in ("label/labels.jsonl", "label/preferences.jsonl", "gen/responses.jsonl"):
        a, b = (tmp_path / "local" / name).read_bytes(), (tmp_path / "ray" / name).read_bytes()
        assert a and a == b, name
    manifest = json.loads((tmp_path / "ray" / "label" / "manifest.json").read_text())
    assert manifest["stages"]["label"]["executor"]["kind"] == "ray"
    assert manifest["stages"]["label"]["counts"]["done"] == 24


@pytest.mark.heavy
def test_an_openai_fleet_spreads_the_actors_over_the_servers_with_local_labels(tmp_path):
    """`--ray-base-urls A,B`: each actor's openai engine talks to its own server (two real HTTP
    servers on 127.0.0.1, answers derived from the prompt), and the labels are those of one
    in-process engine on one server; a fleet for a local engine is refused in one line."""
    from rlaif.backends.openai_engine import OpenAIEngine
    from rlaif.constitution import load_constitution
    from rlaif.judge import Judge, make_config
    from rlaif.stages.labeler import LabelConfig, run_label
    from servers.fake_openai import FakeOpenAIServer

    pairs = _write(tmp_path / "pairs.jsonl", _pairs(16))
    with FakeOpenAIServer(owned_by="vllm") as one:
        local = OpenAIEngine(EngineConfig(kind="openai", model="fake-model", base_url=one.base_url))
        try:
            run_label(pairs, Judge(local, load_constitution("harmless"), make_config(LabelConfig, seed=0)), tmp_path / "local",
                      batch_size=8, progress=False)
        finally:
            local.close()
    with FakeOpenAIServer(owned_by="vllm", delay=0.4) as a, FakeOpenAIServer(owned_by="vllm", delay=0.4) as b:
        cli = run_cli("label", "--pairs", pairs, "--judge", "openai:fake-model", "--base-url", "http://127.0.0.1:9/v1",
                      "--batch-size", 1, "--out", tmp_path / "ray", "--executor", "ray", "--ray-address", GCS(),
                      "--ray-actors", 2, "--ray-base-urls", f"{a.base_url},{b.base_url}", "--ray-block-records", 1,
                      timeout=180)
        assert cli.returncode == 0, cli.stderr[-2000:]
        served = (a.requests, b.requests)
    assert min(served) > 0 and sum(served) == 16 * 2, served  # both orders of 16 pairs, spread over the two
    for name in ("labels.jsonl", "preferences.jsonl"):
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    manifest = json.loads((tmp_path / "ray" / "manifest.json").read_text())
    assert manifest["stages"]["label"]["executor"]["base_urls"] == [a.base_url, b.base_url]
    local_fleet = run_cli("label", "--pairs", pairs, "--out", tmp_path / "x", "--executor", "ray",
                          "--ray-base-urls", a.base_url, timeout=120)
    assert local_fleet.returncode == 2 and "serves an openai: engine" in local_fleet.stderr
    assert len(local_fleet.stderr.strip().splitlines()) == 1


def GCS() -> str:
    return ray.get_runtime_context().gcs_address


def _slow_double(pids: Path | None = None, fail: frozenset = frozenset(), pause: float = 0.0):
    def process(batch):
        if pids is not None:
            (pids / str(os.getpid())).touch()
        time.sleep(pause)
        for r in batch:
            if r["id"] in fail:
                raise RequestFailed(f"server refused {r['id']}", attempts=3)
        return [{"id": r["id"], "x2": r["x"] * 2, "batch": [q["id"] for q in batch]} for r in batch]

    return process


def _items(n: int) -> list[dict]:
    return [{"id": f"r{i:03d}", "x": (i * 7) % 11} for i in range(n)]


def test_blocks_are_capped_and_a_short_run_is_shared_out():
    from rlaif.executors.ray_data import batches_per_block

    two = ExecutorConfig(kind="ray", actors=2)
    assert batches_per_block(1_000_000, 8, two) == 32  # 256 records: the cap
    assert batches_per_block(200, 8, two) == 3  # 25 records a block at most: 4 blocks an actor
    assert batches_per_block(5, 8, two) == 1
    assert batches_per_block(10_000, 8, two.model_copy(update={"block_records": 64})) == 8


def test_failed_records_are_kept_and_the_rest_written(tmp_path):
    items, fail = _items(20), frozenset({"r003", "r014"})
    local = run_stage("double", items, _slow_double(fail=fail), tmp_path / "local", config={}, batch_size=4,
                      progress=False)
    with use_executor(RAY):
        res = run_stage("double", items, _slow_double(fail=fail), tmp_path / "ray", config={}, batch_size=4,
                        progress=False)
    assert res.failed == 2 and {f["id"] for f in res.failures} == fail and local.failed == 2
    assert (tmp_path / "ray" / "double.jsonl").read_bytes() == (tmp_path / "local" / "double.jsonl").read_bytes()
    assert (tmp_path / "ray" / "failures.jsonl").read_bytes() == (tmp_path / "local" / "failures.jsonl").read_bytes()
    assert [r["id"] for r in res.records] == [r["id"] for r in items if r["id"] not in fail]
    with use_executor(RAY):  # a rerun sends only the batches that still miss records
        again = run_stage("double", items, _slow_double(), tmp_path / "ray", config={}, batch_size=4, progress=False)
    assert again.written == 2 and again.done_before == 18 and not again.failed


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path):
    items, pids = _items(48), tmp_path / "pids"
    pids.mkdir()
    out = tmp_path / "ray" / "double.jsonl"
    killed = []

    def killer():
        deadline = time.time() + 60
        while time.time() < deadline:
            lines = out.read_text().count("\n") if out.exists() else 0
            if lines >= 8 and any(pids.iterdir()):
                victim = int(sorted(pids.iterdir(), key=lambda p: p.stat().st_mtime)[-1].name)
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=killer)
    watcher.start()
    with use_executor(RAY):
        res = run_stage("double", items, _slow_double(pids, pause=0.15), tmp_path / "ray", config={}, batch_size=4,
                        progress=False)
    watcher.join()
    assert killed, "no worker was killed: the run ended first"
    assert res.written == 48 and not res.failed
    local = run_stage("double", items, _slow_double(), tmp_path / "local", config={}, batch_size=4, progress=False)
    assert local.written == 48
    assert out.read_bytes() == (tmp_path / "local" / "double.jsonl").read_bytes()
    assert len(list(pids.iterdir())) >= 3  # the dead actor was replaced


DRIVER = """
import sys, time
from rlaif.executors import ExecutorConfig, use_executor
from rlaif.runner import run_stage

def process(batch):
    time.sleep(0.05)
    return [{"id": r["id"], "x2": r["x"] * 2, "batch": [q["id"] for q in batch]} for r in batch]

items = [{"id": f"r{i:03d}", "x": (i * 7) % 11} for i in range(40)]
with use_executor(ExecutorConfig(kind="ray", address=sys.argv[2], actors=1, block_records=2)):
    r = run_stage("double", items, process, sys.argv[1], config={}, batch_size=2, progress=False)
print(r.written, r.done_before)
"""


def test_resume_after_the_driver_is_killed_gives_the_local_bytes(tmp_path):
    out = tmp_path / "ray" / "double.jsonl"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(tmp_path / "ray"), GCS()], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and driver.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 6:
            break
        time.sleep(0.01)
    assert driver.poll() is None, f"the driver ended before it could be killed: {driver.stderr.read()[-800:]}"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    partial = out.read_text().count("\n")
    assert 6 <= partial < 40 and partial % 2 == 0  # whole batches only
    again = subprocess.run([sys.executable, "-c", DRIVER, str(tmp_path / "ray"), GCS()], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.split() == [str(40 - partial), str(partial)]
    local = run_stage("double", _items(40), _slow_double(), tmp_path / "local", config={}, batch_size=2,
                      progress=False)
    assert local.written == 40
    assert out.read_bytes() == (tmp_path / "local" / "double.jsonl").read_bytes()


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    pairs = _write(tmp_path / "pairs.jsonl", _pairs(2))
    blocker = tmp_path / "noray" / "ray"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('ray is not installed here')\n")
    base = ["label", "--pairs", pairs, "--out", tmp_path / "out", "--executor", "ray"]
    missing = run_cli(*base, env={"PYTHONPATH": f"{blocker.parent}{os.pathsep}{ROOT}"}, timeout=120)
    assert missing.returncode == 2 and "rlaif-kit[ray]" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
    dead = run_cli(*base, "--ray-address", "127.0.0.1:9", timeout=120)
    assert dead.returncode == 2 and "cannot reach the Ray cluster" in dead.stderr
    assert len(dead.stderr.strip().splitlines()) == 1, dead.stderr
    stray = run_cli("label", "--pairs", pairs, "--out", tmp_path / "out", "--ray-actors", "3", timeout=120)
    assert stray.returncode == 2 and "applies with --executor ray" in stray.stderr


@pytest.mark.gpu
def test_vllm_judge_on_ray_actors_equals_the_in_process_vllm_engine(tmp_path):
    """One vLLM engine per GPU actor (gpus_per_actor=1) on the embedded model, against the vllm
    engine in this process: the same pre-tokenised prompts (chat template + prefill), so the same
    labels. Needs vllm and a CUDA GPU."""
    from rlaif.backends.vllm_engine import vllm_available

    ok, why = vllm_available()
    if not ok:
        pytest.skip(why)
    import torch

    from rlaif.backends import load_engine
    from rlaif.constitution import load_constitution
    from rlaif.judge import Judge, make_config
    from rlaif.stages.labeler import LabelConfig, run_label

    cfg = EngineConfig(kind="vllm", model="embedded:smollm2-135m-instruct", gpu_memory_utilization=0.3)
    pairs = _write(tmp_path / "pairs.jsonl", _pairs(16))
    lcfg = make_config(LabelConfig, mode="pairwise", debias=True, seed=0)
    local = load_engine(cfg)
    try:
        run_label(pairs, Judge(local, load_constitution("harmless"), lcfg), tmp_path / "local", batch_size=8, progress=False)
    finally:
        local.close()
    gpus = ExecutorConfig(kind="ray", actors=min(2, torch.cuda.device_count()), gpus_per_actor=1)
    ray.shutdown()
    ray.init(include_dashboard=False, log_to_driver=False)
    with use_executor(gpus):
        run_label(pairs, Judge(RemoteEngine(cfg), load_constitution("harmless"), lcfg), tmp_path / "ray", batch_size=8,
                  progress=False)
    local_p = [json.loads(x)["p_a"] for x in (tmp_path / "local" / "labels.jsonl").read_text().splitlines()]
    ray_p = [json.loads(x)["p_a"] for x in (tmp_path / "ray" / "labels.jsonl").read_text().splitlines()]
    assert local_p == pytest.approx(ray_p, abs=1e-4)


def test_a_pipeline_executor_block_hands_the_stages_a_ray_engine(tmp_path, tiny_model_dir):
    """`executor: {kind: ray, ...}` in a pipeline: responses, critique and label run over a stand-in
    built from the role's EngineConfig (no weights on the driver); a bad block is one line."""
    from rlaif.errors import UserError
    from rlaif.pipeline import Pipeline
    from rlaif.pipeline_config import load_pipeline

    sets = [f"policy.model={tiny_model_dir}", f"judge.model={tiny_model_dir}", "executor.kind=ray", "executor.actors=3",
            "executor.gpus_per_actor=1"]
    _, cfg = load_pipeline("cai_harmless", sets)
    assert cfg.executor.kind == "ray" and cfg.executor.actors == 3
    engine = Pipeline(cfg, tmp_path / "p").stage_engine("judge")
    assert isinstance(engine, RemoteEngine) and engine.model == str(tiny_model_dir)
    with pytest.raises(AttributeError):
        engine.option_logprobs  # the driver never loads the judge
    _, plain = load_pipeline("cai_harmless", [f"policy.model={tiny_model_dir}"])
    assert plain.executor.kind == "local"
    with pytest.raises(UserError, match="executor"):
        load_pipeline("cai_harmless", ["executor.kind=spark"])
    with pytest.raises(UserError, match="no role runs on an openai engine"):
        load_pipeline("cai_harmless", ["executor.kind=ray", "executor.base_urls=[http://127.0.0.1:8000/v1]"])


@pytest.mark.heavy
def test_a_pipeline_runs_its_stages_on_ray_with_the_bytes_of_a_local_run(tmp_path, tiny_model_dir):
    """`rlaif run` with `executor: {kind: ray}`: responses, critique (both rounds) and the debiased
    labels of revisions and samples come out byte-identical to the same pipeline run in process, and
    a second Ray run does no new work."""
    import yaml

    from rlaif.cli import main

    cfg = yaml.safe_load((ROOT / "pipelines" / "cai_harmless.yaml").read_text())
    cfg["stages"] = {"responses": {"n": 2, "max_tokens": 8, "temperature": 0.9},
                     "critique": {"rounds": 2, "critique_max_tokens": 8, "revision_max_tokens": 8},
                     "label": {"debias": True, "pairs": ["revisions", "samples"]}}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(cfg))
    sets = ["prompts.limit=4", f"policy.model={tiny_model_dir}", f"judge.model={tiny_model_dir}",
            "policy.batch_size=4", "judge.batch_size=4"]
    run = lambda out, *more: main(["run", str(tmp_path / "p.yaml"), "--out", str(out),  # noqa: E731
                                   *[a for s in sets + list(more) for a in ("--set", s)]])
    assert run(tmp_path / "local") == 0
    on_ray = ["executor.kind=ray", f"executor.address={GCS()}", "executor.actors=2"]
    assert run(tmp_path / "ray", *on_ray) == 0
    outputs = ["responses/responses.jsonl", "critique/chains.jsonl", "critique/sl_cai.jsonl", "label/labels.jsonl",
               "label/preferences.jsonl"]
    for name in outputs:
        a, b = (tmp_path / "local" / name).read_bytes(), (tmp_path / "ray" / name).read_bytes()
        assert a and a == b, name
    manifest = json.loads((tmp_path / "ray" / "label" / "manifest.json").read_text())
    assert manifest["stages"]["label"]["executor"]["actors"] == 2
    before = {n: (tmp_path / "ray" / n).read_bytes() for n in outputs}
    assert run(tmp_path / "ray", *on_ray) == 0
    assert {n: (tmp_path / "ray" / n).read_bytes() for n in outputs} == before
    for stage in ("responses", "label"):
        counts = json.loads((tmp_path / "ray" / stage / "manifest.json").read_text())["stages"][stage]["counts"]
        assert counts["written"] == 0 and counts["done"] == counts["inputs"] > 0, (stage, counts)
