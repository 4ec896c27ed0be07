"""Issue 8, faulty endpoints: `rlaif generate|label --model openai:NAME --base-url ...` against the
misbehaving OpenAI-protocol server (tests/support/servers/fake_openai.py) on 127.0.0.1.

- at 30 % faults (429 + Retry-After, 500, 503, timeouts, malformed JSON, truncated bodies, dropped
  connections) every record completes with the exact text the server meant to send, and the
  retries the manifest reports are exactly the faults the server injected;
- prompts the server always fails exhaust the retry budget: they go to failures.jsonl with the
  reason, the run prints a summary and exits 1, and a re-run against a healthy server sends only
  those prompts again.
"""

from __future__ import annotations

import json

import pytest

from rlaif.prompts_io import read_prompts
from rlaif.stages.responses import ResponsesConfig, expand
from reliability_helpers import message_lines, one_error_line, records, run, write_pairs
from servers.fake_openai import FakeOpenAIServer, reply_text

MODEL = "fake-model"
MAX_TOKENS, SEED, TEMPERATURE = 12, 4, 0.7


def _prompts(path, n, poison=()):
    rows = [{"prompt": f"Question {i}: " + ("POISON please fail " if i in poison else "") + f"how do I plant seed {i}?"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _generate(srv_url, prompts, out, *extra, env=None):
    return run("generate", "--model", f"openai:{MODEL}", "--base-url", srv_url, "--prompts", prompts, "--out", out,
               "--max-tokens", MAX_TOKENS, "--seed", SEED, "--temperature", TEMPERATURE, "--batch-size", 8,
               "--concurrency", 4, "--timeout", 1.5, *extra, env=env, timeout=240)


def _expected_items(prompts):
    cfg = ResponsesConfig(n=1, max_tokens=MAX_TOKENS, temperature=TEMPERATURE, seed=SEED)
    return expand(read_prompts(prompts), MODEL, cfg)


def _check_texts(recs, items):
    """Each response is exactly the reply the server computes for that prompt and seed: nothing from
    a malformed or truncated body was ever taken for an answer."""
    by_id = {it["id"]: it for it in items}
    for r in recs:
        it = by_id[r["id"]]
        assert r["response"] == reply_text(it["prompt"], 0, it["seed"], MAX_TOKENS)


def test_thirty_percent_faults_every_record_completes_and_retries_are_counted(tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl", 24)
    out = tmp_path / "out"
    with FakeOpenAIServer(fault_rate=0.3, seed=9, retry_after=0.05, slow_seconds=3.0) as srv:
        proc = _generate(srv.base_url, prompts, out, "--max-retries", 10)
        counts = srv.counts()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "responses: 24 new, 0 already done, 0 failed" in proc.stdout
    items = _expected_items(prompts)
    recs = records(out / "responses.jsonl")
    assert sorted(r["id"] for r in recs) == sorted(it["id"] for it in items)
    _check_texts(recs, items)

    injected = sum(counts["faults"].values())
    assert injected >= 8 and len(counts["faults"]) == 7, counts  # every kind of fault really happened
    assert 0.15 < injected / counts["requests"] < 0.45
    engine = json.loads((out / "manifest.json").read_text())["stages"]["responses"]["engine"]
    assert engine["retries"] == injected, (engine, counts)  # one retry per injected fault, no more
    assert engine["attempts"] == counts["requests"]
    assert engine["failures"] == 0 and sum(engine["retry_reasons"].values()) == engine["retries"]
    assert set(engine["retry_reasons"]) <= {"429", "500", "503", "timeout", "malformed", "truncated", "dropped",
                                            "connection"}
    assert {"429", "503", "timeout", "malformed"} <= set(engine["retry_reasons"])
    assert not (out / "failures.jsonl").exists()


def test_retry_budget_exhausted_goes_to_failures_and_a_rerun_retries_only_those(tmp_path):
    poison = {2, 9}
    prompts = _prompts(tmp_path / "p.jsonl", 10, poison)
    out = tmp_path / "out"
    items = _expected_items(prompts)
    bad_ids = {it["id"] for it in items if "POISON" in it["prompt"][0]["content"]}
    assert len(bad_ids) == 2

    with FakeOpenAIServer(fail_matching=["POISON"], fail_fault="503", retry_after=0.05) as srv:
        proc = _generate(srv.base_url, prompts, out, "--max-retries", 2)
        first = srv.counts()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "responses: 8 new, 0 already done, 2 failed" in proc.stdout
    err = message_lines(proc.stderr)
    assert len(err) == 1 and "2 records failed after retries" in err[0] and "failures.jsonl" in err[0]

    failures = records(out / "failures.jsonl")
    assert {f["id"] for f in failures} == bad_ids
    for f in failures:
        assert f["stage"] == "responses" and f["attempts"] == 3
        assert "503" in f["reason"] and "gave up after 3 attempts" in f["reason"]
    assert first["faults"] == {"503": first["requests"] - first["ok"]}
    # bounded: each poisoned prompt was tried 3 times, and no prompt was sent twice (the replay of the
    # failed batch takes the answers the batch already got)
    assert first["requests"] - first["ok"] == 2 * 3 and first["ok"] == 8
    manifest = json.loads((out / "manifest.json").read_text())["stages"]["responses"]
    assert manifest["counts"]["failed"] == 2 and not manifest["complete"]
    assert manifest["engine"]["failures"] >= 2

    with FakeOpenAIServer() as healthy:
        again = _generate(healthy.base_url, prompts, out, "--max-retries", 2)
        second = healthy.counts()
    assert again.returncode == 0, again.stderr[-3000:]
    assert "responses: 2 new, 8 already done, 0 failed" in again.stdout
    assert second["requests"] == 2  # only the two failures were sent again
    recs = records(out / "responses.jsonl")
    assert sorted(r["id"] for r in recs) == sorted(it["id"] for it in items)
    _check_texts(recs, items)
    assert not (out / "failures.jsonl").exists()
    assert json.loads((out / "manifest.json").read_text())["stages"]["responses"]["complete"]


def test_label_through_a_faulty_server_completes(tmp_path):
    pairs = write_pairs(tmp_path / "pairs.jsonl", 12)
    out = tmp_path / "out"
    # A "slow" fault holds the reply 3 s and the client gives up at 1.5 s. The margin matters: with
    # 1.0 / 0.5 s a healthy reply on the busy 2-core test box once took over 0.5 s, and the extra
    # retry broke the count below (19 retries for 18 faults).
    with FakeOpenAIServer(fault_rate=0.3, seed=5, retry_after=0.05, slow_seconds=3.0) as srv:
        proc = run("label", "--pairs", pairs, "--out", out, "--model", f"openai:{MODEL}", "--base-url", srv.base_url,
                   "--timeout", 1.5, "--max-retries", 10, "--batch-size", 6, timeout=240)
        counts = srv.counts()
    assert proc.returncode == 0, proc.stderr[-3000:]
    labels = records(out / "labels.jsonl")
    assert len(labels) == 12 == len({r["id"] for r in labels})
    assert all(0.0 <= r["p_a"] <= 1.0 and r["labels_by_order"]["ba"] is not None for r in labels)
    engine = json.loads((out / "manifest.json").read_text())["stages"]["label"]["engine"]
    assert sum(counts["faults"].values()) >= 5
    assert engine["retries"] == sum(counts["faults"].values()) and engine["failures"] == 0


def test_rerun_of_the_faulty_label_run_is_identical(tmp_path):
    """Faults change nothing in the result: a faulty run and a clean one write the same labels."""
    pairs = write_pairs(tmp_path / "pairs.jsonl", 6)
    outs = []
    for rate, seed in ((0.0, 0), (0.4, 9)):
        out = tmp_path / f"out{rate}"
        with FakeOpenAIServer(fault_rate=rate, seed=seed, retry_after=0.05, faults=("429", "500", "malformed",
                                                                                  "truncated", "drop")) as srv:
            proc = run("label", "--pairs", pairs, "--out", out, "--model", f"openai:{MODEL}",
                       "--base-url", srv.base_url, "--max-retries", 12, timeout=240)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(records(out / "labels.jsonl"))
    strip = lambda rs: sorted((r["id"], r["p_a"], json.dumps(r["votes"])) for r in rs)  # noqa: E731
    assert strip(outs[0]) == strip(outs[1])


def test_non_retryable_status_is_a_clear_error(tmp_path):
    prompts = _prompts(tmp_path / "p.jsonl", 3)
    with FakeOpenAIServer() as srv:
        wrong = srv.base_url.replace("/v1", "/nothing-here")
        line = one_error_line(_generate(wrong, prompts, tmp_path / "out", "--max-retries", 2))
        assert srv.counts()["requests"] == 0
    assert "404" in line and "base_url" in line
    assert not (tmp_path / "out" / "responses.jsonl").exists()
    assert not (tmp_path / "out" / "manifest.json").exists()

