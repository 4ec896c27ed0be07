"""`rlaif serve-reward`: one Judge behind HTTP, for trainers on other processes or machines.

Routes (JSON in, JSON out):

    POST /get_reward  OpenRLHF's remote reward protocol (openrlhf/cli/serve_rm.py answers the same):
                      {"query": [prompt+response, ...], "prompts": [...], "labels": [...]}
                      -> {"rewards": [...], "scores": [...], "extra_logs": {"judge_expected": [...]}}
                      (the judge's direct score (E[k]-1)/9 in [0, 1]; judge_expected is E[k] in [1, 10])
    POST /score       {"prompts": [...], "replies": [...]} -> {"rewards": [...], "expected": [...]}
    POST /compare     {"prompts": [...], "a": [...], "b": [...]} -> {"p_a": [...], "labels_by_order": [...]}
    POST /group       {"prompt": ..., "replies": [...], "mode": "direct"|"pairwise"|"reference",
                       "reference": ...} -> {"rewards": [...]}
    GET  /health      {"status": "ok", "judge": ..., "constitution": ..., "requests": n, "units": n,
                       "engine": the engine's counters (prompt tokens, tokens reused, forward passes)}

A prompt is text or a list of chat messages. Every request goes through the judge's async twins,
so requests that arrive together are judged in one engine batch (`batching=False` judges each
request alone, for comparison). With a token, every route but /health needs
`Authorization: Bearer TOKEN` — or `?token=TOKEN` in the URL, for clients that cannot set a header
(OpenRLHF's posts carry none). A malformed request gets 400 and one sentence; a request the
engine failed on gets 503; the server keeps serving either way.
"""

from __future__ import annotations

import asyncio
import hmac
import json

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rlaif.errors import RequestFailed, UserError
from rlaif.integrations.openrlhf import judge_inputs

MAX_ITEMS = 4096  # replies (or pairs) per request
MAX_BYTES = 32 * 1024 * 1024


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _list(body: dict, key: str, kind=None) -> list:
    if key not in body:
        raise BadRequest(f"field {key!r} is missing")
    value = body[key]
    if not isinstance(value, list):
        raise BadRequest(f"field {key!r}: expected a list, got {type(value).__name__}")
    if len(value) > MAX_ITEMS:
        raise BadRequest(f"field {key!r}: {len(value)} items; at most {MAX_ITEMS} per request", 413)
    if kind is not None:
        for i, v in enumerate(value):
            if not isinstance(v, kind):
                raise BadRequest(f"field {key!r}, item {i}: expected {kind.__name__}, got {type(v).__name__}")
    return value


def _same_length(body: dict, *keys: str) -> None:
    lengths = {k: len(body[k]) for k in keys}
    if len(set(lengths.values())) > 1:
        shown = ", ".join(f"{k!r} ({n})" for k, n in lengths.items())
        raise BadRequest(f"fields {shown}: expected as many of each")


class RewardServer:
    """The routes over one judge. `batching=False` judges each request alone, one at a time."""

    def __init__(self, judge, token: str | None = None, batching: bool = True):
        self.judge, self.token, self.batching = judge, token or None, batching
        self._alone = asyncio.Lock() if not batching else None
        self.requests = 0  # well-formed requests taken
        self.units = 0  # replies (or pairs) judged

    # ---------------------------------------------------------------- judge calls

    async def _call(self, name: str, *args):
        """The judge's async twin `a<name>` (gathered with concurrent requests), or the plain
        method in a thread, one request at a time, when batching is off."""
        if self.batching:
            return await getattr(self.judge, "a" + name)(*args)
        async with self._alone:
            return await asyncio.to_thread(getattr(self.judge, name), *args)

    async def score(self, prompts, replies):
        self.units += len(replies)
        return await self._call("score_many", prompts, replies)

    # ---------------------------------------------------------------- routes

    async def get_reward(self, body: dict) -> dict:
        queries = _list(body, "query", str)
        prompts = _list(body, "prompts", str)
        _same_length(body, "query", "prompts")
        try:
            judge_prompts, replies = judge_inputs(queries, prompts)
        except UserError as e:
            raise BadRequest(str(e)) from None
        scores = await self.score(judge_prompts, replies)
        rewards = [s.value for s in scores]
        return {"rewards": rewards, "scores": rewards, "extra_logs": {"judge_expected": [s.expected for s in scores]}}

    async def score_route(self, body: dict) -> dict:
        prompts, replies = _list(body, "prompts"), _list(body, "replies", str)
        _same_length(body, "prompts", "replies")
        scores = await self.score(prompts, replies)
        return {"rewards": [s.value for s in scores], "expected": [s.expected for s in scores]}

    async def compare_route(self, body: dict) -> dict:
        prompts, a, b = _list(body, "prompts"), _list(body, "a", str), _list(body, "b", str)
        _same_length(body, "prompts", "a", "b")
        self.units += len(a)
        judged = await self._call("compare_many", prompts, a, b)
        return {"p_a": [j.p_a for j in judged], "labels_by_order": [j.labels_by_order for j in judged]}

    async def group_route(self, body: dict) -> dict:
        if "prompt" not in body:
            raise BadRequest("field 'prompt' is missing")
        replies = _list(body, "replies", str)
        mode = body.get("mode", "direct")
        reference = body.get("reference")
        if mode not in ("direct", "pairwise", "reference"):
            raise BadRequest(f"field 'mode': {mode!r}; expected direct, pairwise or reference")
        if (mode == "reference") != isinstance(reference, str):
            raise BadRequest("field 'reference': a reply (text) with mode reference, and only then")
        if mode == "pairwise" and len(replies) < 2:
            raise BadRequest("field 'replies': pairwise rewards need at least two replies")
        self.units += len(replies)
        rewards = await self._call("group_rewards_many", [body["prompt"]], [replies], mode,
                                   None if reference is None else [reference])
        return {"rewards": rewards[0]}

    def health(self) -> dict:
        counters = getattr(self.judge.engine, "counters", None)  # tokens prefilled, reused, forward passes
        return {"status": "ok", "judge": self.judge.name, "constitution": self.judge.constitution.name,
                "batching": self.batching, "requests": self.requests, "units": self.units,
                "engine": dict(counters) if isinstance(counters, dict) else None}

    # ---------------------------------------------------------------- plumbing

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = request.headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode()):
            return True
        query_token = request.query_params.get("token")
        return query_token is not None and hmac.compare_digest(query_token.encode(), self.token.encode())

    def endpoint(self, handler):
        async def route(request: Request) -> JSONResponse:
            if not self.authorized(request):
                return JSONResponse({"error": "missing or wrong token: send Authorization: Bearer TOKEN "
                                              "(or ?token=TOKEN)"}, 401, headers={"WWW-Authenticate": "Bearer"})
            try:
                size = int(request.headers.get("content-length") or 0)
                if size > MAX_BYTES:
                    raise BadRequest(f"body of {size} bytes; at most {MAX_BYTES}", 413)
                raw = await request.body()
                if len(raw) > MAX_BYTES:
                    raise BadRequest(f"body of {len(raw)} bytes; at most {MAX_BYTES}", 413)
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise BadRequest(f"body is not JSON ({e.msg if hasattr(e, 'msg') else e})") from None
                if not isinstance(body, dict):
                    raise BadRequest(f"body: expected a JSON object, got {type(body).__name__}")
                self.requests += 1
                return JSONResponse(await handler(body))
            except BadRequest as e:
                return JSONResponse({"error": str(e)}, e.status)
            except UserError as e:  # the judge's own checks (a prompt that is not text or messages, ...)
                return JSONResponse({"error": str(e).splitlines()[0]}, 400)
            except RequestFailed as e:
                return JSONResponse({"error": f"the judge's engine failed on this request: {e.reason}"}, 503)
            except Exception as e:  # noqa: BLE001 - one line to the client; the server keeps serving
                line = str(e).splitlines()[0] if str(e) else ""
                return JSONResponse({"error": f"internal error: {type(e).__name__}: {line}"}, 500)
        return route

    def app(self) -> Starlette:
        async def health(request: Request) -> JSONResponse:
            return JSONResponse(self.health())

        return Starlette(routes=[
            Route("/get_reward", self.endpoint(self.get_reward), methods=["POST"]),
            Route("/score", self.endpoint(self.score_route), methods=["POST"]),
            Route("/compare", self.endpoint(self.compare_route), methods=["POST"]),
            Route("/group", self.endpoint(self.group_route), methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ])


def create_app(judge, token: str | None = None, batching: bool = True) -> Starlette:
    return RewardServer(judge, token, batching).app()


class _Stopped(Exception):
    """SIGINT or SIGTERM after uvicorn finished its graceful shutdown."""


def _stopped(signum, frame):
    raise _Stopped(signum)


def serve(judge, sock, token: str | None = None, batching: bool = True, banner: str = "",
          shutdown_timeout: float = 120.0) -> dict:
    """Serve `judge` on the bound socket `sock` until SIGINT or SIGTERM; requests in flight are
    answered before the engine closes (those still running after `shutdown_timeout` seconds are
    cut off). -> the server's counts."""
    import signal

    import uvicorn

    server = RewardServer(judge, token, batching)
    config = uvicorn.Config(server.app(), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=shutdown_timeout)
    previous = {s: signal.signal(s, _stopped) for s in (signal.SIGINT, signal.SIGTERM)}
    if banner:
        print(banner, flush=True)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except (_Stopped, KeyboardInterrupt):
        pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sock.close()
        judge.close()
    return {"requests": server.requests, "units": server.units}


__all__ = ["RewardServer", "create_app", "serve", "MAX_ITEMS", "MAX_BYTES"]
