"""`rlaif serve-gguf`: a real llama-cpp-python server on 127.0.0.1 with the embedded GGUF, started
the way that runs on every CPU (llama.cpp's extra buffer types off: they crash llama-cpp-python
0.3.36 on AMX Xeons, this test's machine among them); it answers chat completions with logprobs,
the openai engine scores options through it like the transformers engine on the same weights, and
bad input is one line and exit 2 (issue 31)."""

from __future__ import annotations

import json
import math
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from testkit import EMBEDDED, ROOT, run_cli, stop_process

pytest.importorskip("llama_cpp", reason="rlaif serve-gguf needs llama-cpp-python (the dev or server extra)")
pytest.importorskip("llama_cpp.server", reason="rlaif serve-gguf needs llama-cpp-python[server]")

from rlaif.backends import OptionRequest  # noqa: E402
from rlaif.config import EngineConfig  # noqa: E402

BANNER = re.compile(r"OpenAI API at (http://127\.0\.0\.1:(\d+)/v1)")
# the served Q4_1 kernels against the float32 dequantised weights in the transformers engine: the
# tolerance tests/engines/test_gguf_engine.py measured for the same two numerical paths
TOL_LOGP = 0.25


def user(text):
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """`rlaif serve-gguf embedded:... --port 0` in a subprocess -> (base url, the server's output file)."""
    log_path = tmp_path_factory.mktemp("serve-gguf") / "server.log"
    log = open(log_path, "w+")  # a file: a full pipe would block the server
    proc = subprocess.Popen([sys.executable, "-m", "rlaif.cli", "serve-gguf", EMBEDDED, "--port", "0",
                             "--threads", "2", "--alias", "smollm2"],
                            stdout=log, stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    try:
        url = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            m = BANNER.search(log_path.read_text())
            if m:
                url = m.group(1)
                try:
                    with urllib.request.urlopen(url + "/models", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
            time.sleep(0.3)
        else:
            raise RuntimeError(f"serve-gguf did not come up (exit {proc.poll()}): {log_path.read_text()[-1500:]}")
        yield url, log_path
    finally:
        stop_process(proc)
        log.close()


def chat(url: str, body: dict) -> dict:
    req = urllib.request.Request(url + "/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_a_chat_completion_with_logprobs(served):
    url, log_path = served
    banner = log_path.read_text()
    assert "repacked weight layouts off" in banner and "as model 'smollm2'" in banner
    with urllib.request.urlopen(url + "/models", timeout=10) as r:
        assert [m["id"] for m in json.loads(r.read())["data"]] == ["smollm2"]
    # a prompt of many tokens: the case that crashed in llama_decode with the repacked layouts on AMX
    out = chat(url, {"model": "smollm2", "messages": user("Which city is the capital of France? Answer in one word."),
                     "max_tokens": 4, "temperature": 0, "logprobs": True, "top_logprobs": 5})
    choice = out["choices"][0]
    assert choice["message"]["content"].strip()
    assert out["usage"]["prompt_tokens"] > 20 and 0 < out["usage"]["completion_tokens"] <= 4
    steps = choice["logprobs"]["content"]
    assert steps and len(steps) == out["usage"]["completion_tokens"]
    for step in steps:
        top = step["top_logprobs"]
        assert len(top) == 5
        values = [t["logprob"] for t in top]
        assert all(math.isfinite(v) and v <= 0 for v in values)
        assert values == sorted(values, reverse=True)
        assert sum(math.exp(v) for v in values) <= 1 + 1e-4
        assert step["logprob"] == pytest.approx(values[0], abs=1e-4)  # greedy: the chosen token is the top one


@pytest.mark.heavy  # a second model in the process; make test keeps the chat completion above
@pytest.mark.slow
def test_the_openai_engine_scores_options_through_it_like_the_transformers_engine(served, embedded_engine):
    from rlaif.backends.openai_engine import OpenAIEngine

    url, _ = served
    # tokenizer: the chat template is rendered here and the prefill continues the assistant turn
    # (the completions route), so the server sees the very tokens the local engine evaluates
    engine = OpenAIEngine(EngineConfig(kind="openai", model="smollm2", base_url=url, concurrency=1, timeout=120,
                                       top_logprobs=20, tokenizer=EMBEDDED))
    reqs = [OptionRequest(user("Which one is a fruit? (A) an apple (B) a brick. Reply with the letter only."),
                          prefill="The answer is ("),
            OptionRequest(user("Which one is a colour? (A) a chair (B) blue. Reply with the letter only."),
                          prefill="The answer is (")]
    try:
        served_lp = engine.option_logprobs(reqs, ["A", "B"])
        assert engine.stats()["prefill_mode"] == "completions"
    finally:
        engine.close()
    local = embedded_engine.option_logprobs(reqs, ["A", "B"])
    for s, t in zip(served_lp, local):
        assert not s.floored
        for o in "AB":
            assert math.isfinite(s[o]) and s[o] < 0
            assert abs(s[o] - t[o]) <= TOL_LOGP, (o, s[o], t[o])


def test_extra_buffers_are_off_inside_and_restored_after():
    from llama_cpp import llama_cpp as low

    from rlaif.gguf_server import extra_buffers_off

    assert low.llama_model_default_params().use_extra_bufts is True  # llama.cpp's default
    with extra_buffers_off():
        assert low.llama_model_default_params().use_extra_bufts is False
    assert low.llama_model_default_params().use_extra_bufts is True
    with extra_buffers_off(enabled=False):  # --repack
        assert low.llama_model_default_params().use_extra_bufts is True


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    notes = tmp_path / "notes.gguf"
    notes.write_text("not weights\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cases = [
            (["serve-gguf", "/nope/model.gguf"], "gguf: /nope/model.gguf: file not found"),
            (["serve-gguf", str(notes), "--port", "0"], f"gguf: {notes}: not a GGUF file"),
            (["serve-gguf", "embedded:nope"], "unknown embedded model 'nope'"),
            (["serve-gguf", EMBEDDED, "--port", "70000"], "--port 70000: expected 0 (a free port) to 65535"),
            (["serve-gguf", EMBEDDED, "--port", str(port)], f"127.0.0.1:{port} is already in use"),
            (["serve-gguf", EMBEDDED, "--host", "203.0.113.7", "--port", "0"], "not an address of this machine"),
        ]
        for args, expected in cases:
            p = run_cli(*args, timeout=120)
            lines = p.stderr.strip().splitlines()
            assert p.returncode == 2, (args, p.stderr)
            assert len(lines) == 1 and lines[0].startswith("rlaif: error: ") and expected in lines[0], (args, p.stderr)


def test_without_the_server_extra_the_error_names_the_install(monkeypatch):
    from rlaif.errors import UserError
    from rlaif.gguf_server import serve

    monkeypatch.setitem(sys.modules, "llama_cpp.server.app", None)  # `import llama_cpp.server.app` now fails
    with pytest.raises(UserError, match=r"pip install 'rlaif-kit\[server\]'"):
        serve(EMBEDDED, port=0)

