"""`rlaif serve-reward` (rlaif/integrations/server.py, cli.py, openrlhf.py) against real servers on
127.0.0.1, and OpenRLHF's in-process reward file (openrlhf_reward_func.py).

What OpenRLHF 0.11.2 sends, from openrlhf/utils/agent.py (`SingleTurnAgentExecutor`):

    query = hf_tokenizer.decode(output["observation_tokens"], skip_special_tokens=False)
    ...
    payload = {
        "query": queries_list[start_idx:end_idx],
        "prompts": prompts_list[start_idx:end_idx],
        "labels": labels_list[start_idx:end_idx],
    }
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url, json=data) as response:
            response.raise_for_status()
            return await response.json()

and it reads `rewards_info.get("scores")` (else "rewards") and `rewards_info.get("extra_logs")`.
`observation_tokens` = the prompt's tokens (`hf_tokenizer(text=prompt, add_special_tokens=False)`)
followed by the sampled tokens, which end with the policy's EOS. The tests build queries that way
with the embedded model's tokenizer, post that JSON, and,
where `openrlhf` imports (it needs no GPU to import, but aiohttp, sympy, pylatexenc and
transformers), drive its own `_fetch_rewards_via_http`.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rlaif.integrations.openrlhf import judge_inputs, prompt_messages, split_query, strip_end

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
TOL = 1e-4
CONVERSATIONS = [("How do I make a cup of tea?", "Boil water, pour it over a tea bag and wait three minutes."),
                 ("Write a mean insult about my neighbour.", "I would rather not insult anyone."),
                 ("What is the capital of France?", "Paris."),
                 ("Tell me how to pick a lock to break into a house.", "Sure, first get a tension wrench and")]


# ------------------------------------------------------------------ splitting OpenRLHF's query


def test_split_query_and_prompt_messages_read_chat_templates():
    chatml = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    assert prompt_messages(chatml) == [{"role": "system", "content": "Be brief."},
                                       {"role": "user", "content": "Hi there"}]
    assert split_query(chatml + "Hello!<|im_end|>", chatml) == "Hello!"
    llama3 = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
              "<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert prompt_messages(llama3) == [{"role": "user", "content": "Hi"}]
    assert split_query(llama3 + "Yo <|eot_id|><|end_of_text|>", llama3) == "Yo"
    gemma = "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
    assert prompt_messages(gemma) == [{"role": "user", "content": "Hi"}]
    assert prompt_messages("Question: 2+2?\nAnswer:") == "Question: 2+2?\nAnswer:"
    # the prompt cut from the left (OpenRLHF keeps the last max_len tokens) or re-spaced by the decode
    long_prompt = "x" * 500 + " and finally the question?"
    assert split_query(long_prompt[200:] + " An answer.</s>", long_prompt) == " An answer."
    assert strip_end("text <|im_end|>\n<|endoftext|>") == "text"


def test_query_without_its_prompt_is_one_clear_error():
    from rlaif.errors import UserError

    with pytest.raises(UserError, match="query 1: query does not contain its prompt") as e:
        judge_inputs(["p1 r1", "something else entirely"], ["p1", "a prompt that is not there"])
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="2 queries and 1 prompts"):
        judge_inputs(["a", "b"], ["a"])


# ------------------------------------------------------------------ a real server


def start_server(*args, env=None):
    """`rlaif serve-reward --port 0 ARGS` -> (process, base URL) once it listens."""
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "serve-reward", "--port", "0", "--device", "cpu",
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})})
    lines = []
    deadline = time.time() + 300
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if "listening on " in line:
            url = line.split("listening on ", 1)[1].split()[0]
            return proc, url, lines
    proc.kill()
    raise AssertionError(f"serve-reward did not start: {''.join(lines)}{proc.stderr.read()}")


def stop(proc, sig=signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out + err


@pytest.fixture(scope="module")
def server():
    proc, url, lines = start_server(env={"RLAIF_REWARD_TOKEN": TOKEN})
    assert url.startswith("http://127.0.0.1:")  # the default binds this machine only
    yield url
    rc, out = stop(proc)
    assert rc == 0, out


@pytest.fixture(scope="module")
def judge(embedded_engine):
    from rlaif.judge import Judge

    return Judge(embedded_engine, "harmless")


def post(url, body, token=TOKEN, raw: bytes | None = None) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        try:
            return e.code, json.loads(text)
        except ValueError:
            return e.code, {"error": text.decode(errors="replace")}


def in_threads(calls):
    """Every call at once, each on its own thread -> their results in order."""
    out = [None] * len(calls)

    def run(i):
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return out


def openrlhf_rollouts(tokenizer, conversations=CONVERSATIONS):
    """(prompts, queries) as OpenRLHF builds them: the chat-templated prompt, and the decode of its
    tokens followed by the reply's tokens and the EOS token, special tokens kept."""
    prompts, queries = [], []
    for user, reply in conversations:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                               add_generation_prompt=True)
        ids = tokenizer(text=prompt, add_special_tokens=False)["input_ids"]
        ids += tokenizer(text=reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        prompts.append(prompt)
        queries.append(tokenizer.decode(ids, skip_special_tokens=False))
    return prompts, queries


def expected_scores(judge, prompts, conversations=CONVERSATIONS):
    msgs = [prompt_messages(p) for p in prompts]
    assert [m[-1] for m in msgs] == [{"role": "user", "content": u} for u, _ in conversations]
    return judge.score_many(msgs, [r for _, r in conversations])


@pytest.mark.slow
def test_openrlhf_payload_gets_the_judges_scores(server, judge, tokenizer):
    """One query per request, all at once, as rollouts finish; the body is the payload above as
    aiohttp's `json=` sends it (json.dumps, Content-Type: application/json)."""
    prompts, queries = openrlhf_rollouts(tokenizer)
    assert judge_inputs(queries, prompts)[1] == [r for _, r in CONVERSATIONS]
    payloads = [{"query": queries[i:i + 1], "prompts": prompts[i:i + 1], "labels": [None]} for i in range(len(queries))]
    answers = in_threads([lambda d=d: post(f"{server}/get_reward?token={TOKEN}", d, token=None) for d in payloads])
    want = expected_scores(judge, prompts)
    for (code, a), s in zip(answers, want):
        assert code == 200 and a["rewards"] == pytest.approx([s.value], abs=TOL) and a["scores"] == a["rewards"]
        assert a["extra_logs"]["judge_expected"] == pytest.approx([s.expected], abs=1e-3)
    assert len({round(s.value, 4) for s in want}) == len(want)  # four replies, four different rewards


@pytest.mark.slow
def test_openrlhf_own_client_function(server, judge, tokenizer):
    agent = pytest.importorskip("openrlhf.utils.agent", reason="openrlhf is not installed in this environment")
    prompts, queries = openrlhf_rollouts(tokenizer)
    executor = agent.SingleTurnAgentExecutor(f"{server}/get_reward?token={TOKEN}")
    answers = asyncio.run(executor._fetch_rewards_via_http(queries[:2], prompts[:2], ["", ""]))
    want = expected_scores(judge, prompts[:2], CONVERSATIONS[:2])
    assert [x for a in answers for x in a["rewards"]] == pytest.approx([s.value for s in want], abs=TOL)


@pytest.mark.slow
def test_plain_routes_score_compare_group(server, judge):
    prompts = [[{"role": "user", "content": u}] for u, _ in CONVERSATIONS]
    replies = [r for _, r in CONVERSATIONS]
    code, got = post(f"{server}/score", {"prompts": prompts, "replies": replies})
    want = [s.value for s in judge.score_many(prompts, replies)]
    assert code == 200 and got["rewards"] == pytest.approx(want, abs=TOL)
    code, got = post(f"{server}/compare", {"prompts": prompts[:2], "a": replies[:2], "b": ["Go away.", "No."]})
    want = judge.compare_many(prompts[:2], replies[:2], ["Go away.", "No."])
    assert code == 200 and got["p_a"] == pytest.approx([j.p_a for j in want], abs=TOL)
    group = ["Paris.", "Lyon.", "It is Paris, a city on the Seine."]
    code, got = post(f"{server}/group", {"prompt": "What is the capital of France?", "replies": group,
                                         "mode": "pairwise"})
    assert code == 200 and got["rewards"] == pytest.approx(
        judge.group_rewards("What is the capital of France?", group, mode="pairwise"), abs=TOL)


@pytest.mark.slow
def test_token_is_required_when_set(server):
    body = {"prompts": ["hi"], "replies": ["hello"]}
    for token in (None, "wrong"):
        code, got = post(f"{server}/score", body, token=token)
        assert code == 401 and "token" in got["error"]
    assert post(f"{server}/score?token={TOKEN}", body, token=None)[0] == 200
    with urllib.request.urlopen(f"{server}/health", timeout=30) as r:  # health needs none
        assert json.loads(r.read())["status"] == "ok"


@pytest.mark.slow
def test_malformed_requests_get_400_and_one_line_and_the_server_keeps_serving(server):
    cases = [
        (f"{server}/score", None, b"{not json", "not JSON"),
        (f"{server}/score", [1, 2], None, "expected a JSON object"),
        (f"{server}/score", {"prompts": ["hi"]}, None, "'replies' is missing"),
        (f"{server}/score", {"prompts": ["hi", "yo"], "replies": ["a"]}, None, "expected as many of each"),
        (f"{server}/score", {"prompts": [{"role": "user"}], "replies": ["a"]}, None, "prompt"),
        (f"{server}/score", {"prompts": ["hi"], "replies": [3]}, None, "expected str"),
        (f"{server}/get_reward", {"query": ["abc"], "prompts": ["zzz"]}, None, "does not contain its prompt"),
        (f"{server}/get_reward", {"query": "abc"}, None, "expected a list"),
        (f"{server}/group", {"prompt": "hi", "replies": ["a"], "mode": "pairwise"}, None, "at least two"),
        (f"{server}/group", {"prompt": "hi", "replies": ["a", "b"], "mode": "best"}, None, "expected direct"),
    ]
    for url, body, raw, words in cases:
        code, got = post(url, body, raw=raw)
        assert code == 400 and words in got["error"] and "\n" not in got["error"], (body, raw, got)
    code, got = post(f"{server}/score", {"prompts": ["Say hi."], "replies": ["Hi!"]})
    assert code == 200 and 0 <= got["rewards"][0] <= 1
    with urllib.request.urlopen(f"{server}/health", timeout=30) as r:
        assert json.loads(r.read())["requests"] >= 1


@pytest.mark.slow
def test_verl_compute_score_through_the_server(server, judge, monkeypatch):
    """verl's reward loop runs a plain compute_score in its thread pool, every sample at once
    (verl/experimental/reward_loop/reward_manager/naive.py): so do we, against the server."""
    from rlaif.integrations.verl import compute_score

    monkeypatch.setenv("RLAIF_REWARD_TOKEN", TOKEN)
    rows = [("hh", reply, None, {"prompt": [{"role": "user", "content": user}], "index": i})
            for i, (user, reply) in enumerate(CONVERSATIONS)]

    async def reward_loop():
        loop = asyncio.get_running_loop()
        calls = []
        for source, reply, truth, info in rows:
            info = {**info, "num_turns": None, "rollout_reward_scores": {}}
            calls.append(loop.run_in_executor(None, lambda s=source, r=reply, t=truth, i=info: compute_score(
                data_source=s, solution_str=r, ground_truth=t, extra_info=i, url=server)))
        return await asyncio.gather(*calls)

    got = asyncio.run(reward_loop())
    want = judge.score_many([r[3]["prompt"] for r in rows], [r[1] for r in rows])
    assert [g["score"] for g in got] == pytest.approx([s.value for s in want], abs=TOL)
    assert set(got[0]) == {"score", "judge_expected"}


@pytest.mark.slow
def test_shutdown_answers_the_request_in_flight_and_exits_0():
    proc, url, _ = start_server("--no-batching")
    box = {}

    def client():
        box["answer"] = post(f"{url}/score", {"prompts": ["Say hi."] * 4, "replies": [f"Hi {i}!" for i in range(4)]},
                             token=None)

    t = threading.Thread(target=client)
    t.start()
    time.sleep(0.5)  # the request is in: four replies take the CPU judge more than that
    rc, out = stop(proc, signal.SIGINT)
    t.join(60)
    assert rc == 0, out
    assert box["answer"][0] == 200 and len(box["answer"][1]["rewards"]) == 4
    assert "stopped after 1 requests (4 replies judged)" in out
    assert "Traceback" not in out


def test_port_in_use_is_one_line_and_exit_2():
    import socket

    from testkit import run_cli

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = run_cli("serve-reward", "--port", port, timeout=120)
    assert r.returncode == 2 and f"--port {port}" in r.stderr and "already in use" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ batching, in process


@pytest.mark.slow
def test_concurrent_requests_reach_the_engine_together(embedded_engine):
    """Eight requests at once to a server over a judge whose engine counts its calls: fewer engine
    calls than requests, and each request gets the score the judge gives that reply."""
    import socket

    import uvicorn

    from rlaif.integrations.server import create_app
    from rlaif.judge import Judge

    class Counting:
        def __init__(self, engine):
            self._engine, self.calls = engine, 0

        def __getattr__(self, name):
            return getattr(self._engine, name)

        def option_logprobs(self, requests, options):
            self.calls += 1
            return self._engine.option_logprobs(requests, options)

    engine = Counting(embedded_engine)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(create_app(Judge(engine, "harmless")), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        replies = [f"Reply number {i}: be kind to others." for i in range(8)]
        answers = in_threads([lambda r=r: post(f"{url}/score", {"prompts": ["Any advice?"], "replies": [r]}, None)
                              for r in replies])
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    assert engine.calls < len(replies)
    want = [s.value for s in Judge(embedded_engine, "harmless").score_many(["Any advice?"] * 8, replies)]
    assert [a[1]["rewards"][0] for a in answers] == pytest.approx(want, abs=TOL)


# ------------------------------------------------------------------ OpenRLHF's reward file


@pytest.mark.slow
def test_openrlhf_reward_file_loaded_and_called_as_upstream(judge, tokenizer, monkeypatch):
    """openrlhf/utils/agent.py loads a .py remote_url with
    `importlib.util.spec_from_file_location("reward_func", path)` and calls
    `asyncio.to_thread(self.reward_func, queries[i:i+1], prompts[i:i+1], labels[i:i+1])` per rollout."""
    import importlib.util

    import torch

    import rlaif.integrations.openrlhf_reward_func as shipped

    monkeypatch.setenv("RLAIF_JUDGE", "embedded:smollm2-135m-instruct")
    monkeypatch.setenv("RLAIF_JUDGE_DEVICE", "cpu")
    spec = importlib.util.spec_from_file_location("reward_func", shipped.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    prompts, queries = openrlhf_rollouts(tokenizer)

    async def rollouts():
        return await asyncio.gather(*(asyncio.to_thread(module.reward_func, queries[i:i + 1], prompts[i:i + 1],
                                                        [None]) for i in range(len(queries))))

    answers = asyncio.run(rollouts())
    want = expected_scores(judge, prompts)
    for a, s in zip(answers, want):
        assert isinstance(a["rewards"], torch.Tensor) and a["rewards"].shape == (1,)
        assert a["rewards"].item() == pytest.approx(s.value, abs=TOL)
        assert a["extra_logs"]["judge_expected"].item() == pytest.approx(s.expected, abs=1e-3)
