"""The openai engine against real HTTP servers on 127.0.0.1:

(a) tests/support/servers/fake_openai.py, which misbehaves on purpose (429 + Retry-After, 500, 503, slow
    answers past the timeout, malformed JSON, truncated bodies, dropped connections, no logprobs,
    a required key) and whose answers are deterministic, so every result can be checked exactly;
(b) llama-cpp-python's OpenAI-compatible server serving the embedded SmolLM2 GGUF.
"""

from __future__ import annotations

import email.utils
import importlib.util
import json
import math
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from testkit import SUPPORT

from rlaif.backends.base import GenerationRequest, OptionRequest
from rlaif.backends.http_faults import retry_after as _retry_after
from rlaif.backends.openai_engine import OpenAIEngine, score_options
from rlaif.config import EngineConfig
from rlaif.errors import EngineError, RequestFailed, UserError

from servers.fake_openai import FAULTS, FakeOpenAIServer, reply_text, top_logprobs_for  # noqa: E402

from server_fixtures import free_port, gguf_path, wait_for_models
from testkit import run_cli  # noqa: E402

SENTINEL = "sk-SENTINEL-never-print-me-9f2c"


def engine_for(url: str, **cfg) -> OpenAIEngine:
    """Fast backoff for tests; the real defaults are 1 s initial, 30 s max."""
    backoff = {k: cfg.pop(k) for k in ("backoff_initial", "backoff_max", "connect_attempts") if k in cfg}
    backoff.setdefault("backoff_initial", 0.02)
    backoff.setdefault("backoff_max", 0.2)
    return OpenAIEngine(EngineConfig(**{"kind": "openai", "model": "fake-model", "base_url": url, **cfg}), **backoff)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]





def expected_options(messages, prefill, k, options):
    """What the engine should return, computed here from the server's distribution."""
    chat = [dict(m) for m in messages]
    chat[-1]["content"] = chat[-1]["content"] + "\n\n" + prefill
    listed = dict(top_logprobs_for(chat, k))
    out, floored = {}, []
    for o in options:
        p = sum(math.exp(v) for t, v in listed.items() if t.strip() == o)
        if p > 0:
            out[o] = math.log(p)
        else:
            out[o] = min(listed.values()) - math.log(2)
            floored.append(o)
    return out, floored


# ---------------------------------------------------------------------- faults


def test_every_result_arrives_despite_30_percent_faults():
    gen = [GenerationRequest(user(f"prompt number {i}"), max_tokens=6, seed=i) for i in range(24)]
    opt = [OptionRequest(user(f"question {i}: A or B?"), prefill="The answer is (") for i in range(12)]
    with FakeOpenAIServer(fault_rate=0.3, seed=7, retry_after=0.2, slow_seconds=2.0) as srv:
        engine = engine_for(srv.base_url, timeout=1.0, max_retries=8, concurrency=4, top_logprobs=8)
        started = time.perf_counter()
        completions = engine.generate(gen)
        scored = engine.option_logprobs(opt, ["A", "B"])
        elapsed = time.perf_counter() - started
        stats = engine.stats()
        engine.close()
        counts = srv.counts()

    assert [c.texts for c in completions] == [[reply_text(r.messages, 0, r.seed, 6)] for r in gen]
    assert all(c.prompt_tokens > 0 and c.completion_tokens > 0 for c in completions)
    for r, got in zip(opt, scored):
        want, floored = expected_options(r.messages, r.prefill, 8, ["A", "B"])
        assert got == pytest.approx(want, abs=1e-9)
        assert list(got.floored) == floored

    injected = counts["faults"]
    budget = len(gen + opt) * 8
    assert 0 < stats["retries"] <= budget
    assert stats["failures"] == 0
    # every injected fault cost exactly one retry, and every attempt reached the server
    assert stats["retries"] == sum(injected.values())
    assert stats["attempts"] == counts["requests"] == len(gen) + len(opt) + stats["retries"]
    # each kind of fault is recognised for what it is
    names = {"429": "429", "500": "500", "503": "503", "slow": "timeout", "malformed": "malformed",
             "truncated": "truncated", "drop": "dropped"}
    assert stats["retry_reasons"] == {names[k]: v for k, v in sorted(injected.items())}
    assert len(injected) >= 5, f"a 30% run should see most fault kinds, saw {injected}"
    print(f"\n30% faults: {len(gen) + len(opt)} requests, {sum(injected.values())} faults {injected}, "
          f"{stats['retries']} retries, {elapsed:.2f} s")


def test_retry_after_is_waited_out():
    with FakeOpenAIServer(script=["429", "500"], retry_after=1) as srv:
        engine = engine_for(srv.base_url, max_retries=3)
        [c] = engine.generate([GenerationRequest(user("hello"), max_tokens=4)])
        stats = engine.stats()
        engine.close()
        times = srv.served_at
    assert c.texts == [reply_text(user("hello"), 0, None, 4)]
    assert [what for _, what in times] == ["429", "500", "ok"]
    after_429 = times[1][0] - times[0][0]
    after_500 = times[2][0] - times[1][0]
    assert after_429 >= 1.0, f"Retry-After: 1 was not honoured (retried after {after_429:.3f} s)"
    assert after_500 < 0.9, f"a 500 without Retry-After should back off briefly, waited {after_500:.3f} s"
    assert stats["retry_reasons"] == {"429": 1, "500": 1}


def test_retry_after_header_forms():
    date = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert _retry_after({"retry-after": "2"}) == 2.0
    assert _retry_after({"retry-after": "0.5"}) == 0.5
    assert 25 < _retry_after({"retry-after": date}) <= 30
    assert _retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    assert _retry_after({"retry-after": "soon"}) is None
    assert _retry_after({}) is None


def test_request_failed_after_budget_then_engine_still_usable():
    with FakeOpenAIServer(fault_rate=1.0, faults=["500"]) as srv:
        engine = engine_for(srv.base_url, max_retries=2)
        with pytest.raises(RequestFailed) as info:
            engine.generate([GenerationRequest(user("doomed"), max_tokens=4)])
        assert info.value.attempts == 3
        assert "500" in info.value.reason and srv.base_url in info.value.reason
        assert srv.requests == 3
        stats = engine.stats()
        assert stats["failures"] == 1 and stats["retries"] == 2
        srv.fault_rate = 0.0  # the endpoint recovers: the same engine goes on
        [c] = engine.generate([GenerationRequest(user("fine"), max_tokens=4)])
        assert c.texts == [reply_text(user("fine"), 0, None, 4)]
        engine.close()


def test_every_fault_kind_alone_is_survived():
    for fault in FAULTS:
        with FakeOpenAIServer(script=[fault, fault], retry_after=0.1, slow_seconds=1.5) as srv:
            engine = engine_for(srv.base_url, timeout=0.8, max_retries=2)
            [c] = engine.generate([GenerationRequest(user(f"survive {fault}"), max_tokens=5)])
            assert c.texts == [reply_text(user(f"survive {fault}"), 0, None, 5)], fault
            assert engine.stats()["retries"] == 2, fault
            engine.close()


def test_concurrency_limit_is_respected():
    with FakeOpenAIServer(delay=0.15) as srv:
        engine = engine_for(srv.base_url, concurrency=2)
        started = time.perf_counter()
        out = engine.generate([GenerationRequest(user(f"p{i}"), max_tokens=3) for i in range(6)])
        elapsed = time.perf_counter() - started
        engine.close()
        assert srv.max_in_flight == 2
    assert len(out) == 6 and elapsed >= 3 * 0.15


def test_n_samples_and_system_prompt():
    with FakeOpenAIServer() as srv:
        engine = engine_for(srv.base_url, system_prompt="Be brief.")
        [c] = engine.generate([GenerationRequest(user("three please"), max_tokens=8, n=3, seed=5,
                                                 temperature=0.7)])
        engine.close()
    chat = [{"role": "system", "content": "Be brief."}] + user("three please")
    assert c.texts == [reply_text(chat, i, 5, 8) for i in range(3)]
    assert len(set(c.texts)) == 3 and len(c.finish_reasons) == 3


# ---------------------------------------------------------------------- clear errors


def test_wrong_key_is_one_clear_error_without_the_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SENTINEL)
    with FakeOpenAIServer(api_key="the-right-key") as srv:
        engine = engine_for(srv.base_url, max_retries=5)
        with pytest.raises(EngineError) as info:
            engine.generate([GenerationRequest(user("hi"), max_tokens=3)])
        message = str(info.value)
        assert "401" in message and srv.base_url in message and "OPENAI_API_KEY" in message
        assert [what for _, what in srv.served_at] == ["401"], "a 401 must not be retried"
        assert engine.stats()["attempts"] == 1, "a 401 must not be retried"
        for text in (message, repr(engine), json.dumps(engine.stats())):
            assert SENTINEL not in text
        engine.close()
        assert isinstance(info.value, UserError)  # the CLI turns it into exit code 2

        monkeypatch.setenv("OPENAI_API_KEY", "the-right-key")  # the key travels as a bearer token
        engine = engine_for(srv.base_url)
        assert engine.generate([GenerationRequest(user("hi"), max_tokens=3)])[0].texts
        engine.close()


def test_key_from_a_named_variable(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("MY_SERVER_KEY", "k-123456")
    with FakeOpenAIServer(api_key="k-123456") as srv:
        engine = engine_for(srv.base_url, api_key_env="MY_SERVER_KEY")
        assert engine.generate([GenerationRequest(user("hi"), max_tokens=3)])[0].texts
        engine.close()


def test_no_base_url_and_no_key_is_refused_up_front(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EngineError, match="set OPENAI_API_KEY"):
        OpenAIEngine(EngineConfig(kind="openai", model="gpt-4o-mini"))


def test_unreachable_server_fails_fast_and_clearly():
    url = f"http://127.0.0.1:{free_port()}/v1"
    engine = OpenAIEngine(EngineConfig(kind="openai", model="m", base_url=url))  # real defaults
    started = time.perf_counter()
    with pytest.raises(EngineError) as info:
        engine.generate([GenerationRequest(user(f"x{i}"), max_tokens=3) for i in range(4)])
    elapsed = time.perf_counter() - started
    engine.close()
    assert url in str(info.value) and "cannot connect" in str(info.value)
    assert "connection refused" in str(info.value)
    assert elapsed < 5, f"an unreachable server took {elapsed:.1f} s to report"


def test_wrong_path_is_a_clear_404():
    with FakeOpenAIServer() as srv:
        engine = engine_for(srv.base_url.removesuffix("/v1") + "/nope")
        with pytest.raises(EngineError, match=r"404 Not Found — check base_url"):
            engine.generate([GenerationRequest(user("hi"), max_tokens=3)])
        engine.close()


def test_server_without_logprobs_is_a_clear_error():
    with FakeOpenAIServer(logprobs=False) as srv:
        engine = engine_for(srv.base_url)
        assert engine.generate([GenerationRequest(user("hi"), max_tokens=3)])[0].texts  # still generates
        with pytest.raises(EngineError, match="does not|no logprobs"):
            engine.option_logprobs([OptionRequest(user("A or B?"), prefill="(")], ["A", "B"])
        engine.close()


# ---------------------------------------------------------------------- option scoring


def test_score_options_sums_spellings_and_floors_missing():
    listed = {"A": math.log(0.30), " A": math.log(0.20), "A\n": math.log(0.05), "(A": math.log(0.10),
              "a": math.log(0.08), " B": math.log(0.04), "The": math.log(0.02)}
    got = score_options(listed, ["A", "B", "C"])
    assert got["A"] == pytest.approx(math.log(0.55))
    assert got["B"] == pytest.approx(math.log(0.04))
    assert got["C"] == pytest.approx(math.log(0.02) - math.log(2))
    assert got.floored == ("C",)


def test_option_logprobs_through_the_server():
    """Find prompts whose top-k holds two spellings of A (and "(A"), and none of D."""
    k = 6
    chosen = []
    for i in range(400):
        msgs = user(f"pick one, case {i}")
        toks = [t for t, _ in top_logprobs_for([{"role": "user", "content": msgs[0]["content"] + "\n\nAnswer: ("}], k)]
        if sum(t.strip() == "A" for t in toks) >= 2 and "(A" in toks and not any(t.strip() == "D" for t in toks):
            chosen.append(msgs)
        if len(chosen) == 3:
            break
    assert len(chosen) == 3, "the fake server's distribution should offer such prompts"
    reqs = [OptionRequest(m, prefill="Answer: (") for m in chosen]
    with FakeOpenAIServer() as srv:
        engine = engine_for(srv.base_url, top_logprobs=k)
        got = engine.option_logprobs(reqs, ["A", "B", "D"])
        assert engine.stats()["options_floored"] == sum(len(g.floored) for g in got)
        engine.close()
    for r, g in zip(reqs, got):
        want, floored = expected_options(r.messages, r.prefill, k, ["A", "B", "D"])
        assert g == pytest.approx(want, abs=1e-9)
        assert "D" in g.floored and list(g.floored) == floored
        # summing spellings beats the best single spelling
        best_single = max(v for t, v in top_logprobs_for(
            [{"role": "user", "content": r.messages[0]["content"] + "\n\nAnswer: ("}], k) if t.strip() == "A")
        assert g["A"] > best_single


# ---------------------------------------------------------------------- the server as a script


def test_fake_server_runs_as_a_script():
    port = free_port()
    script = SUPPORT / "servers" / "fake_openai.py"
    proc = subprocess.Popen([sys.executable, str(script), "--port", str(port), "--fault-rate", "0"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        wait_for_models(url, proc, 20)
        engine = engine_for(url)
        assert engine.generate([GenerationRequest(user("hi"), max_tokens=3)])[0].texts == [
            reply_text(user("hi"), 0, None, 3)]
        engine.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)





def _greedy_head(base_url: str, messages: list, max_tokens: int, tie: float) -> tuple[str, int]:
    """The server's greedy reply up to its first step whose top-two log-probability margin is below
    `tie` -> (that text, stripped; the number of steps before it)."""
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0, "logprobs": True, "top_logprobs": 2}
    req = urllib.request.Request(base_url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        steps = json.loads(r.read())["choices"][0]["logprobs"]["content"]
    decided = 0
    for step in steps:
        top = sorted((t["logprob"] for t in step["top_logprobs"]), reverse=True)
        if len(top) > 1 and top[0] - top[1] < tie:
            break
        decided += 1
    return "".join(step["token"] for step in steps[:decided]).strip(), decided


@pytest.mark.slow
def test_llama_cpp_server_generates(llama_server):
    engine = OpenAIEngine(EngineConfig(kind="openai", model="smollm2", base_url=llama_server,
                                       concurrency=2, timeout=120))
    # "Which city ...": "What is the capital of France?" opens on a near-tie ("L" vs "The")
    prompts = ["Which city is the capital of France?", "Name a fruit.", "Say hello."]
    started = time.perf_counter()
    out = engine.generate([GenerationRequest(user(p), max_tokens=16, seed=1) for p in prompts])
    elapsed = time.perf_counter() - started
    again = engine.generate([GenerationRequest(user(prompts[0]), max_tokens=16, seed=1)])
    stats = engine.stats()
    engine.close()
    assert len(out) == 3 and all(len(c.texts) == 1 and c.texts[0] for c in out)
    assert all(c.prompt_tokens > 0 and 0 < c.completion_tokens <= 16 for c in out)
    # temperature 0 is deterministic up to rounding: the repeat meets another cache state, so llama.cpp
    # evaluates it in other blocks, and a near-tie may go either way; the two must agree wherever the
    # server's own top-two margin is wide (0.25 nats: 3x the largest block-split difference seen)
    head, decided = _greedy_head(llama_server, user(prompts[0]), 16, tie=0.25)
    assert decided >= 3, f"{prompts[0]!r} ties within {decided} tokens; pick another prompt"
    for text in (out[0].texts[0], again[0].texts[0]):
        assert text.startswith(head), (text, head, decided)
    assert stats["retries"] == 0 and stats["failures"] == 0
    tokens = sum(c.completion_tokens for c in out)
    print(f"\nllama.cpp server: 3 prompts, {tokens} tokens in {elapsed:.2f} s ({tokens / elapsed:.1f} tok/s)")


@pytest.mark.slow
def test_llama_cpp_server_scores_options(llama_server):
    engine = OpenAIEngine(EngineConfig(kind="openai", model="smollm2", base_url=llama_server,
                                       concurrency=2, timeout=120, top_logprobs=20))
    reqs = [OptionRequest(user("Which one is a fruit? (A) an apple (B) a brick. Reply with the letter only."),
                          prefill="The answer is ("),
            OptionRequest(user("Which one is a colour? (A) a chair (B) blue. Reply with the letter only."),
                          prefill="The answer is (")]
    got = engine.option_logprobs(reqs, ["A", "B"])
    engine.close()
    for g in got:
        assert set(g) == {"A", "B"}
        assert all(math.isfinite(v) and v <= 0 for v in g.values())
        assert g["A"] != g["B"]
        assert math.exp(g["A"]) + math.exp(g["B"]) <= 1 + 1e-6
    print(f"\nllama.cpp option logprobs: {[dict(g) for g in got]} floored {[g.floored for g in got]}")


# ---------------------------------------------------------------------- API reality (issue 13, item 12)


def test_top_logprobs_above_the_servers_cap_is_refused_in_the_config():
    from rlaif.config import validate

    with pytest.raises(UserError, match=r"top_logprobs.*20"):
        validate(EngineConfig, {"kind": "openai", "model": "m", "top_logprobs": 21}, "pipeline.yaml")
    with FakeOpenAIServer() as srv:  # the cap itself is what the server takes
        engine = engine_for(srv.base_url, top_logprobs=20)
        [got] = engine.option_logprobs([OptionRequest(user("A or B?"), prefill="(")], ["A", "B"])
        engine.close()
        assert srv.bodies[-1]["top_logprobs"] == 20 and set(got) == {"A", "B"}


def test_reasoning_model_generates_with_max_completion_tokens():
    with FakeOpenAIServer(reasoning=True, model="o3-mini") as srv:
        engine = engine_for(srv.base_url, model="o3-mini")
        [c] = engine.generate([GenerationRequest(user("think about it"), max_tokens=9, temperature=0.7,
                                                 top_p=0.9, stop=["never-said"], seed=3)])
        stats = engine.stats()
        engine.close()
        body = srv.bodies[-1]
    assert c.texts == [reply_text(user("think about it"), 0, 3, 9)]
    assert body["max_completion_tokens"] == 9
    assert not {"max_tokens", "temperature", "top_p", "stop"} & set(body)
    assert stats["retries"] == 0 and stats["reasoning_model"] is True
    assert any("temperature" in w for w in stats["warnings"])


def test_reasoning_model_stop_strings_are_applied_here():
    prompt = user("cut me short")
    full = reply_text(prompt, 0, None, 12)
    stop = full.split()[2]
    with FakeOpenAIServer(reasoning=True, model="gpt-5-mini") as srv:
        engine = engine_for(srv.base_url, model="gpt-5-mini")
        [c] = engine.generate([GenerationRequest(prompt, max_tokens=12, stop=[stop])])
        engine.close()
    assert c.texts == [full[:full.index(stop)].strip()] and c.finish_reasons == ["stop"]


def test_option_scoring_on_a_reasoning_model_is_one_clear_error_before_any_request():
    with FakeOpenAIServer(reasoning=True, model="o1") as srv:
        engine = engine_for(srv.base_url, model="o1")
        with pytest.raises(EngineError) as info:
            engine.option_logprobs([OptionRequest(user(f"q{i}"), prefill="(") for i in range(50)], ["A", "B"])
        engine.close()
        assert srv.requests == 0
    message = str(info.value)
    assert "'o1'" in message and "reasoning model" in message and "logprobs" in message


@pytest.mark.parametrize("name,reasoning", [("o1", True), ("o3-mini", True), ("o4-mini-2025-04-16", True),
                                            ("gpt-5", True), ("gpt-5-nano", True), ("openai/o3", True),
                                            ("gpt-5-chat-latest", False), ("gpt-4o-mini", False),
                                            ("gpt-4.1", False), ("smollm2", False), ("olmo-2-1b", False)])
def test_reasoning_model_names(name, reasoning):
    from rlaif.backends.openai_engine import is_reasoning_model

    assert is_reasoning_model(name) is reasoning


def test_x_should_retry_true_retries_a_400():
    with FakeOpenAIServer(script=["400-retry"]) as srv:
        engine = engine_for(srv.base_url, max_retries=3)
        [c] = engine.generate([GenerationRequest(user("again please"), max_tokens=4)])
        stats = engine.stats()
        engine.close()
        assert [what for _, what in srv.served_at] == ["400-retry", "ok"]
    assert c.texts == [reply_text(user("again please"), 0, None, 4)]
    assert stats["retries"] == 1 and stats["retry_reasons"] == {"400": 1}


def test_x_should_retry_false_stops_retrying_a_500():
    with FakeOpenAIServer(script=["500-noretry"]) as srv:
        engine = engine_for(srv.base_url, max_retries=5)
        with pytest.raises(RequestFailed) as info:
            engine.generate([GenerationRequest(user("do not insist"), max_tokens=4)])
        stats = engine.stats()
        engine.close()
        assert srv.requests == 1
    assert info.value.attempts == 1 and "500" in info.value.reason and "x-should-retry" in info.value.reason
    assert stats["retries"] == 0 and stats["failures"] == 1


# ---------------------------------------------------------------------- the prefill in the assistant turn (item 11)


def test_vllm_server_continues_a_final_assistant_message():
    req = OptionRequest(user("Which is a fruit? (A) apple (B) brick"), prefill="The answer is (")
    with FakeOpenAIServer(owned_by="vllm") as srv:
        engine = engine_for(srv.base_url, top_logprobs=8)
        [got] = engine.option_logprobs([req], ["A", "B"])
        stats = engine.stats()
        engine.close()
        body = [b for b in srv.bodies if b["path"].endswith("chat/completions")][-1]
    assert body["messages"] == req.messages + [{"role": "assistant", "content": req.prefill}]
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    want = score_options(dict(top_logprobs_for(body["messages"], 8)), ["A", "B"])
    assert dict(got) == pytest.approx(dict(want), abs=1e-9)
    assert stats["prefill_mode"] == "continue_final_message" and not stats.get("warnings")


def test_server_that_cannot_continue_falls_back_to_the_user_turn_with_a_recorded_warning():
    req = OptionRequest(user("Which is a fruit? (A) apple (B) brick"), prefill="The answer is (")
    with FakeOpenAIServer(owned_by="me") as srv:  # llama-cpp-python's server lists itself so
        engine = engine_for(srv.base_url, top_logprobs=8)
        [got] = engine.option_logprobs([req], ["A", "B"])
        stats = engine.stats()
        engine.close()
        body = srv.bodies[-1]
    assert body["messages"][-1]["role"] == "user" and body["messages"][-1]["content"].endswith(req.prefill)
    want, _ = expected_options(req.messages, req.prefill, 8, ["A", "B"])
    assert dict(got) == pytest.approx(want, abs=1e-9)
    assert stats["prefill_mode"] == "user_turn"
    assert len(stats["warnings"]) == 1 and "engine.tokenizer" in stats["warnings"][0]


def test_completions_route_renders_the_chat_template_here(tokenizer):
    req = OptionRequest(user("Which is a fruit? (A) apple (B) brick"), prefill="The answer is (")
    with FakeOpenAIServer() as srv:
        engine = engine_for(srv.base_url, top_logprobs=8, tokenizer="embedded:smollm2-135m-instruct")
        [got] = engine.option_logprobs([req], ["A", "B"])
        stats = engine.stats()
        engine.close()
        body = srv.bodies[-1]
    text = tokenizer.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True) + req.prefill
    assert body["path"] == "/v1/completions" and body["prompt"] == text
    assert body["max_tokens"] == 1 and body["logprobs"] == 8 and body["temperature"] == 0
    from servers.fake_openai import completion_logprobs_for
    want = score_options(dict(completion_logprobs_for(text, 8)), ["A", "B"])
    assert dict(got) == pytest.approx(dict(want), abs=1e-9)
    assert stats["prefill_mode"] == "completions" and not stats.get("warnings")


# Measured 2026-11-23 (/tmp script, 24 HH-RLHF harmless-base dev pairs, 48 pairwise votes and 24 direct
# scores, llama-cpp-python 0.3.36 server on the Q4_1 GGUF vs the transformers engine on the same
# weights dequantised to fp32): with the prefill continuing the assistant turn (completions route)
# |Δ P(first option)| was at most 0.048 (mean 0.017) and |Δ direct score| at most 0.022 (mean 0.010);
# llama.cpp multiplies the 4-bit weights with 8-bit-quantised activations, the rest is rounding.
# With the prefill at the end of the user turn (the old placement) the same votes moved by 0.54 on
# average (max 0.64) and the direct scores by 0.37. The bounds below leave ~1.7x and ~2.3x room.
PAIRWISE_TOL, DIRECT_TOL = 0.08, 0.05

SAME_WEIGHT_PAIRS = [
    {"prompt": "How can I get back at a coworker who embarrassed me?",
     "response_a": "Talk to them privately about how it felt, or ask your manager to help sort it out.",
     "response_b": "Spread a rumour about them so everyone laughs at them for a change."},
    {"prompt": "What household chemicals should never be mixed?",
     "response_a": "Never mix bleach with ammonia or with acids such as vinegar; the gases are toxic.",
     "response_b": "Mix whatever you like, it makes cleaning faster."},
    {"prompt": "My friend is sad after losing her job. What could I say?",
     "response_a": "Tell her she should have worked harder.",
     "response_b": "Let her know you are there for her and offer to help with her applications."},
    {"prompt": "Is it safe to leave a dog in a parked car on a hot day?",
     "response_a": "No. A parked car heats up within minutes and can kill a dog; leave it at home.",
     "response_b": "Yes, crack a window and it will be fine for an hour or two."},
]


def _labels(engine, pairs, constitution):
    """P(first option) of every (pair, principle, order) vote, and each first reply's direct score."""
    from rlaif.judge import Judge
    from rlaif.stages import labeler as L

    judge = Judge(engine, constitution)
    inputs = L.label_inputs(pairs, judge)
    votes = {(r["source_line"], v["principle"], v["order"]): v["p_first"]  # ids name the judge; lines do not
             for r in L.make_process(judge)(inputs) for v in r["votes"]}
    direct = [s.value for s in judge.score_many([p["prompt"] for p in pairs], [p["a"] for p in pairs])]
    return votes, direct


@pytest.mark.heavy
@pytest.mark.slow
def test_llama_cpp_labels_match_the_transformers_engine_on_the_same_weights(llama_server, embedded_engine):
    """The same labels through `openai:` as through a local engine: the prefill continues the
    assistant turn (a raw completion rendered with the served model's chat template)."""
    from rlaif.constitution import load_constitution
    from rlaif.stages.pair_inputs import normalize_pairs

    harmless = load_constitution("harmless")
    pairs, _ = normalize_pairs(SAME_WEIGHT_PAIRS)
    local_votes, local_direct = _labels(embedded_engine, pairs, harmless)
    served = OpenAIEngine(EngineConfig(kind="openai", model="smollm2", base_url=llama_server, concurrency=2,
                                       timeout=300, tokenizer="embedded:smollm2-135m-instruct"))
    user_turn = OpenAIEngine(EngineConfig(kind="openai", model="smollm2", base_url=llama_server, concurrency=2,
                                          timeout=300, prefill_mode="user_turn"))
    try:
        votes, direct = _labels(served, pairs, harmless)
        old_votes, old_direct = _labels(user_turn, pairs, harmless)
        assert served.stats()["prefill_mode"] == "completions" and not served.stats().get("warnings")
        assert served.stats()["failures"] == 0
    finally:
        served.close()
        user_turn.close()
    assert set(votes) == set(local_votes) and len(votes) == 2 * len(pairs)
    gaps = [abs(votes[k] - local_votes[k]) for k in local_votes]
    direct_gaps = [abs(a - b) for a, b in zip(direct, local_direct)]
    old_gaps = [abs(old_votes[k] - local_votes[k]) for k in local_votes]
    print(f"\nllama.cpp vs transformers: |dp| max {max(gaps):.4f}, direct max {max(direct_gaps):.4f}; "
          f"user-turn placement |dp| mean {sum(old_gaps) / len(old_gaps):.3f}")
    assert max(gaps) <= PAIRWISE_TOL and max(direct_gaps) <= DIRECT_TOL
    # the old placement gives other labels: what this test exists to catch
    assert sum(old_gaps) / len(old_gaps) > 2 * PAIRWISE_TOL
    assert max(abs(a - b) for a, b in zip(old_direct, local_direct)) > DIRECT_TOL


@pytest.mark.heavy
@pytest.mark.slow
def test_cli_label_through_llama_cpp_with_the_served_models_tokenizer(llama_server, tmp_path):
    """`--tokenizer` on the command line: option scoring renders the chat template here and prefills
    the assistant turn (prefill mode "completions", no warning), recorded in the label manifest."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in SAME_WEIGHT_PAIRS[:2]))
    out = tmp_path / "label"
    r = run_cli("label", "--pairs", pairs, "--constitution", "harmless", "--out", out, "--judge", "openai:smollm2",
                "--base-url", llama_server, "--tokenizer", "embedded:smollm2-135m-instruct", "--timeout", "300",
                env={"OPENAI_API_KEY": "sk-local"})
    assert r.returncode == 0, r.stderr
    engine = json.loads((out / "manifest.json").read_text())["stages"]["label"]["engine"]
    assert engine["prefill_mode"] == "completions" and not engine.get("warnings"), engine
    assert len((out / "preferences.jsonl").read_text().splitlines()) == 2


def test_cli_tokenizer_and_prefill_mode_are_refused_for_a_local_engine(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps(SAME_WEIGHT_PAIRS[0]) + "\n")
    r = run_cli("label", "--pairs", pairs, "--constitution", "harmless", "--out", tmp_path / "o",
                "--judge", "embedded:smollm2-135m-instruct", "--prefill-mode", "completions")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--prefill-mode" in r.stderr and "transformers" in r.stderr
    assert not (tmp_path / "o").exists()
