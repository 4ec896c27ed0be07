"""A real OpenAI-protocol HTTP server on 127.0.0.1 that misbehaves on purpose.

It answers `POST /v1/chat/completions` and `GET /v1/models` with deterministic, OpenAI-shaped JSON
(the reply text and the next-token `top_logprobs` are derived from the prompt, see `reply_text` and
`top_logprobs_for`, so tests can recompute them), and injects faults with a seeded RNG:

  429        status 429 with `Retry-After: <retry_after>`
  500        status 500
  503        status 503 with `Retry-After: <retry_after>`
  slow       sleeps `slow_seconds` (meant to exceed the client's timeout), then answers
  malformed  status 200, `application/json`, a body that is not JSON
  truncated  status 200, `Content-Length` larger than the bytes sent, then the socket closes
  drop       the socket closes without any response

Faults that only `script` and `fail_fault` give (never drawn at random):

  400          status 400, a refusal of this one prompt (as a content filter or an over-long prompt gets)
  400-retry    status 400 with `x-should-retry: true` (the client must retry it)
  500-noretry  status 500 with `x-should-retry: false` (the client must not retry it)

Other switches: `delay=s` makes every normal answer take s seconds; `logprobs=False` never returns
logprobs; `api_key="..."` answers 401 unless the request carries `Authorization: Bearer <key>`;
`script=[...]` forces the first requests' faults in order (e.g. `["429"]`: the first chat request
gets a 429, the rest follow `fault_rate`); `fail_matching=["text"]` gives every request whose prompt
contains one of the texts the fault `fail_fault` (default "500"), so those records exhaust their retries.

The API as the real servers enforce it:
- `top_logprobs` above 20 is a 400, as on OpenAI's API;
- `reasoning=True` answers like an OpenAI reasoning model (o1/o3/o4-mini/gpt-5): `max_tokens`,
  `temperature` or `top_p` other than 1, `stop` and `logprobs` are each a 400 naming the parameter;
- `owned_by="vllm"` lists the model as a vLLM server does and honours its chat extensions
  `continue_final_message` / `add_generation_prompt` (both true is a 400, as in vLLM's
  ChatCompletionRequest.check_generation_prompt); any other server ignores them;
- `POST /v1/completions` takes a raw `prompt` string and answers with completions-style logprobs
  (`top_logprobs` a list of token -> logprob dicts), its distribution derived from the prompt text.

Counters (`requests`, `ok`, `faults_injected` by kind, `served_at` times, `max_in_flight`) and every
request body (`bodies`, with its `path` and the `in_flight` count on arrival) are read by tests.

    with FakeOpenAIServer(fault_rate=0.3, seed=1) as srv:
        engine = OpenAIEngine(EngineConfig(kind="openai", model="fake", base_url=srv.base_url))

    python tests/support/servers/fake_openai.py --port 8011 --fault-rate 0.3
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "503", "slow", "malformed", "truncated", "drop")
SCRIPTED = ("400", "400-retry", "500-noretry")  # given by `script` / `fail_fault` only
MAX_TOP_LOGPROBS = 20

# The next-token "vocabulary" the fake model scores. Several spellings per option on purpose:
# "A", " A" and "A\n" strip to "A"; "(A" and "a" do not.
VOCAB = ["A", " A", "A\n", "(A", "a", "B", " B", "(B", "b", "C", " C", "D", " D",
         "1", " 1", "2", " 2", "Yes", " No", "The", " the", "I", ".", "\n", " response"]


def prompt_text(messages: list[dict]) -> str:
    return "\n".join(f"{m.get('role')}: {m.get('content')}" for m in messages)


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def top_logprobs_for(messages: list[dict], k: int) -> list[tuple[str, float]]:
    """The server's next-token distribution for a prompt: `k` (token, logprob) pairs, best first.
    Deterministic in the prompt; the logprobs over the whole VOCAB sum to probability 1."""
    rng = random.Random(_digest(prompt_text(messages)))
    scores = [rng.gauss(0.0, 2.0) for _ in VOCAB]
    top = max(scores)
    log_z = top + math.log(sum(math.exp(s - top) for s in scores))
    ranked = sorted(zip(VOCAB, (s - log_z for s in scores)), key=lambda t: -t[1])
    return ranked[:max(0, k)]


def completion_logprobs_for(prompt: str, k: int) -> list[tuple[str, float]]:
    """The distribution `/v1/completions` serves for a raw prompt (a chat of one "raw" turn)."""
    return top_logprobs_for([{"role": "raw", "content": prompt}], k)


def reasoning_refusal(body: dict) -> str | None:
    """What an OpenAI reasoning model says about the first parameter it does not take, or None."""
    if body.get("max_tokens") is not None:
        return "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead."
    for name in ("temperature", "top_p"):
        if body.get(name) not in (None, 1, 1.0):
            return f"Unsupported value: '{name}' does not support {body[name]} with this model. Only the default (1) value is supported."
    for name in ("logprobs", "top_logprobs", "stop"):
        if body.get(name):
            return f"Unsupported parameter: '{name}' is not supported with this model."
    return None


def reply_text(messages: list[dict], index: int = 0, seed: int | None = None, max_tokens: int | None = None) -> str:
    """Deterministic reply: a hash tag plus the last user message's first words, cut to max_tokens words."""
    last = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    tag = hashlib.sha256(f"{prompt_text(messages)}|{index}|{seed}".encode()).hexdigest()[:8]
    words = f"reply-{tag} to: {last}".split()
    if max_tokens is not None:
        words = words[:max(1, max_tokens)]
    return " ".join(words)


class FakeOpenAIServer:
    def __init__(self, *, fault_rate: float = 0.0, faults=FAULTS, seed: int = 0, retry_after: float = 1,
                 slow_seconds: float = 3.0, logprobs: bool = True, api_key: str | None = None,
                 model: str = "fake-model", script=(), delay: float = 0.0, port: int = 0,
                 host: str = "127.0.0.1", fail_matching=(), fail_fault: str = "500", owned_by: str = "fake",
                 reasoning: bool = False):
        unknown = set(faults) - set(FAULTS) | set(script) - set(FAULTS + SCRIPTED) | {fail_fault} - set(FAULTS + SCRIPTED)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; known: {FAULTS + SCRIPTED}")
        if host != "127.0.0.1":
            raise ValueError("the fake server only listens on 127.0.0.1")
        self.fault_rate = fault_rate
        self.faults = tuple(faults)
        self.rng = random.Random(seed)
        self.retry_after = retry_after
        self.slow_seconds = slow_seconds
        self.logprobs = logprobs
        self.api_key = api_key
        self.model = model
        self.script = list(script)
        self.delay = delay  # every normal answer waits this long (to observe concurrency)
        self.fail_matching = tuple(fail_matching)  # prompts containing one of these always get fail_fault
        self.fail_fault = fail_fault
        self.owned_by = owned_by  # "vllm": list the model as vLLM does and honour its chat extensions
        self.reasoning = reasoning  # answer like an OpenAI reasoning model
        self.bodies: list[dict] = []  # every completion request body, with "path" added
        self.in_flight = 0
        self.max_in_flight = 0  # most chat requests being handled at once
        self.lock = threading.Lock()
        self.requests = 0  # chat completion requests received
        self.ok = 0  # answered normally (slow ones included)
        self.faults_injected: Counter = Counter()
        self.served_at: list[tuple[float, str]] = []  # (monotonic time, "ok" | fault kind | "401")
        self.httpd = _HTTPServer((host, port), _make_handler(self))
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://{host}:{self.port}/v1"
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> "FakeOpenAIServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True, name=f"fake-openai-{self.port}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def total_faults(self) -> int:
        return sum(self.faults_injected.values())

    def counts(self) -> dict:
        with self.lock:
            return {"requests": self.requests, "ok": self.ok, "faults": dict(self.faults_injected)}

    # ------------------------------------------------------------------ decisions

    def _pick_fault(self, body: dict | None = None) -> str | None:
        with self.lock:
            self.requests += 1
            body = body or {}
            text = (prompt_text(body.get("messages") or []) + str(body.get("prompt") or "")) if self.fail_matching else ""
            if self.fail_matching and any(m in text for m in self.fail_matching):
                fault = self.fail_fault
            elif self.script:
                fault = self.script.pop(0)
            elif self.fault_rate > 0 and self.rng.random() < self.fault_rate:
                fault = self.rng.choice(self.faults)
            else:
                fault = None
            if fault is not None:
                self.faults_injected[fault] += 1
            return fault

    def _record(self, what: str) -> None:
        with self.lock:
            if what == "ok":
                self.ok += 1
            self.served_at.append((time.monotonic(), what))

    def refusal(self, body: dict) -> str | None:
        """The 400 message a real server gives this request body, or None if it is acceptable."""
        k = body.get("top_logprobs")
        if isinstance(k, int) and k > MAX_TOP_LOGPROBS:
            return (f"Invalid 'top_logprobs': integer above maximum value. Expected a value <= {MAX_TOP_LOGPROBS}, "
                    f"but got {k} instead.")
        if self.reasoning:
            return reasoning_refusal(body)
        if self.owned_by == "vllm" and body.get("continue_final_message") and body.get("add_generation_prompt", True):
            return "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        return None

    def text_completion(self, body: dict) -> dict:
        """`/v1/completions`: one token (max_tokens 1) with completions-style logprobs."""
        prompt = body.get("prompt") or ""
        if isinstance(prompt, list):
            prompt = prompt[0] if prompt else ""
        k = int(body.get("logprobs") or 0)
        ranked = completion_logprobs_for(prompt, max(k, 1))
        token, lp = ranked[0]
        logprobs = {"tokens": [token], "token_logprobs": [lp], "top_logprobs": [dict(ranked[:k])],
                    "text_offset": [len(prompt)]} if k and self.logprobs else None
        return {"id": "cmpl-" + hashlib.sha256(prompt.encode()).hexdigest()[:12], "object": "text_completion",
                "created": 1700000000, "model": body.get("model") or self.model,
                "choices": [{"index": 0, "text": token, "logprobs": logprobs, "finish_reason": "length"}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": 1,
                          "total_tokens": len(prompt.split()) + 1}}

    def completion(self, body: dict) -> dict:
        messages = body.get("messages") or []
        n = int(body.get("n") or 1)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        want_logprobs = bool(body.get("logprobs")) and self.logprobs
        k = int(body.get("top_logprobs") or 0)
        prompt_tokens = len(prompt_text(messages).split())
        choices = []
        completion_tokens = 0
        for i in range(n):
            if want_logprobs:
                ranked = top_logprobs_for(messages, max(k, 1))
                token, lp = ranked[0]
                text = token if max_tokens == 1 else reply_text(messages, i, body.get("seed"), max_tokens)
                logprobs = {"content": [{
                    "token": token, "logprob": lp, "bytes": list(token.encode()),
                    "top_logprobs": [{"token": t, "logprob": v, "bytes": list(t.encode())}
                                     for t, v in ranked[:k]],
                }]}
            else:
                text = reply_text(messages, i, body.get("seed"), max_tokens)
                logprobs = None
            used = len(text.split()) or 1
            completion_tokens += used
            finish = "length" if max_tokens is not None and used >= max_tokens else "stop"
            choices.append({"index": i, "message": {"role": "assistant", "content": text},
                            "logprobs": logprobs, "finish_reason": finish})
        return {
            "id": "chatcmpl-" + hashlib.sha256(prompt_text(messages).encode()).hexdigest()[:12],
            "object": "chat.completion", "created": 1700000000, "model": body.get("model") or self.model,
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }


class _HTTPServer(ThreadingHTTPServer):
    # the default listen backlog (5) drops connections when a client opens 16 at once, and a dropped
    # SYN is retried a second later: concurrency would look capped by the client when it is not
    request_queue_size = 128


def _make_handler(server: FakeOpenAIServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        # -------------------------------------------------------------- helpers

        def _send_json(self, status: int, obj, headers: dict | None = None) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str, headers: dict | None = None) -> None:
            self._send_json(status, {"error": {"message": message, "type": kind, "code": status}}, headers)

        def _authorized(self) -> bool:
            if server.api_key is None:
                return True
            return self.headers.get("Authorization", "") == f"Bearer {server.api_key}"

        def _read_body(self) -> dict:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            return json.loads(raw or b"{}")

        # -------------------------------------------------------------- routes

        def do_GET(self):
            if self.path.rstrip("/") in ("/v1/models", "/models"):
                if not self._authorized():
                    return self._error(401, "Incorrect API key provided.", "invalid_request_error")
                return self._send_json(200, {"object": "list", "data": [
                    {"id": server.model, "object": "model", "created": 1700000000, "owned_by": server.owned_by}]})
            self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self):
            try:
                body = self._read_body()
            except (ValueError, OSError):
                return self._error(400, "request body is not JSON", "invalid_request_error")
            path = self.path.rstrip("/")
            if path not in ("/v1/chat/completions", "/chat/completions", "/v1/completions", "/completions"):
                return self._error(404, f"no route {self.path}", "not_found")
            if not self._authorized():
                server._record("401")
                return self._error(401, "Incorrect API key provided.", "invalid_request_error")
            entry = {**body, "path": path}
            with server.lock:
                server.bodies.append(entry)
            refusal = server.refusal(body)
            if refusal is not None:
                with server.lock:
                    server.requests += 1
                server._record("400")
                return self._error(400, refusal, "invalid_request_error")
            fault = server._pick_fault(body)
            with server.lock:
                server.in_flight += 1
                server.max_in_flight = max(server.max_in_flight, server.in_flight)
                entry["in_flight"] = server.in_flight  # requests being answered, this one included
            try:
                self._answer(body, fault)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (e.g. after its timeout)
            finally:
                with server.lock:
                    server.in_flight -= 1

        def _answer(self, body: dict, fault: str | None) -> None:
            after = {"Retry-After": f"{server.retry_after:g}"}
            if fault in ("400", "400-retry"):
                server._record(fault)
                headers = {"x-should-retry": "true"} if fault == "400-retry" else None
                return self._error(400, "This prompt was refused by the content filter.", "invalid_request_error",
                                   headers)
            if fault == "500-noretry":
                server._record(fault)
                return self._error(500, "The server had an error; do not retry.", "server_error",
                                   {"x-should-retry": "false"})
            if fault == "429":
                server._record(fault)
                return self._error(429, "Rate limit reached; slow down.", "rate_limit_exceeded", after)
            if fault == "500":
                server._record(fault)
                return self._error(500, "The server had an error.", "server_error")
            if fault == "503":
                server._record(fault)
                return self._error(503, "The engine is overloaded.", "server_error", after)
            if fault == "drop":
                server._record(fault)
                return self._hang_up()
            raw = self.path.rstrip("/").endswith("/completions") and "chat" not in self.path
            payload = json.dumps(server.text_completion(body) if raw else server.completion(body)).encode()
            if fault == "malformed":
                server._record(fault)
                data = b'{"id": "chatcmpl-x", "choices": [{"index": 0, "message": {"content": oops'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            if fault == "truncated":
                server._record(fault)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload) + 64))
                self.end_headers()
                self.wfile.write(payload[:len(payload) // 2])
                self.wfile.flush()
                return self._hang_up()
            if fault == "slow":
                server._record(fault)
                time.sleep(server.slow_seconds)
            else:
                if server.delay:
                    time.sleep(server.delay)
                server._record("ok")
            self._send_json(200, json.loads(payload))
            if fault == "slow":
                with server.lock:
                    server.ok += 1

        def _hang_up(self) -> None:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    return Handler


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--faults", default=",".join(FAULTS), help="comma-separated subset of " + ",".join(FAULTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--retry-after", type=float, default=1)
    ap.add_argument("--slow-seconds", type=float, default=3.0)
    ap.add_argument("--delay", type=float, default=0.0)
    ap.add_argument("--no-logprobs", action="store_true")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--model", default="fake-model")
    ap.add_argument("--fail-matching", action="append", default=[],
                    help="requests whose prompt contains this text always fail (repeatable)")
    ap.add_argument("--fail-fault", default="500", choices=FAULTS + SCRIPTED, help="the fault --fail-matching gives")
    ap.add_argument("--owned-by", default="fake", help='"vllm": behave as a vLLM server (continue_final_message)')
    ap.add_argument("--reasoning", action="store_true", help="refuse parameters as an OpenAI reasoning model does")
    args = ap.parse_args(argv)
    srv = FakeOpenAIServer(fault_rate=args.fault_rate, faults=[f for f in args.faults.split(",") if f],
                           seed=args.seed, retry_after=args.retry_after, slow_seconds=args.slow_seconds,
                           logprobs=not args.no_logprobs, api_key=args.api_key, model=args.model,
                           delay=args.delay, port=args.port, fail_matching=args.fail_matching,
                           fail_fault=args.fail_fault, owned_by=args.owned_by, reasoning=args.reasoning)
    print(f"fake OpenAI server on {srv.base_url} (fault rate {args.fault_rate})", flush=True)
    try:
        srv.httpd.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        srv.httpd.server_close()
        print(json.dumps(srv.counts()), flush=True)


if __name__ == "__main__":
    main()
