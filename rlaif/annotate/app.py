"""The annotation page: Starlette routes over a Store. Server-rendered HTML, a little JS for the
keyboard, no build step.

    GET  /?annotator=NAME        the annotator's next pair (or "all done"), progress done/total
    POST /label                  one label (form fields below), then 303 back to the page
    GET  /api/progress?annotator=NAME   {"done": d, "total": t}
    GET  /static/page.css|page.js

Every text that comes from the data (the conversation, the replies, the question, the annotator's
name, comments) goes through `html.escape` before it reaches the page, and the page forbids inline
scripts (Content-Security-Policy), so red-team data holding markup or `<script>` shows as text.
The form works without JS too; the script only adds the keyboard (1–8, b, s, n).

Against DNS rebinding (a foreign page whose domain is made to resolve to this machine, so that
the browser lets it read the pairs and post labels): requests whose Host header is not this
server's — the bound address, localhost, 127.0.0.1, [::1], this machine's names when bound to every
interface, and any `--allowed-host` — get 400 (starlette's TrustedHostMiddleware); a POST whose
Origin header is not this server's own (http://HOST as the request names it) gets 403. A POST with
no Origin header (curl, scripts) is let through: browsers send one on every cross-site POST.
"""

from __future__ import annotations

import html
import socket
from importlib import resources
from typing import Sequence
from string import Template
from urllib.parse import parse_qs, quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from rlaif.annotate import scale
from rlaif.annotate.store import Store, check_name
from rlaif.errors import UserError

CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; form-action 'self'"
_STATIC = {"page.css": "text/css; charset=utf-8", "page.js": "text/javascript; charset=utf-8"}
LOCAL_HOSTS = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def allowed_hosts(bound: str, extra: Sequence[str] = ()) -> list[str]:
    """Host header values to answer (IPv6 in brackets, as browsers send them): the loopback names,
    the bound address, or this machine's names when bound to every interface, plus `extra`."""
    hosts = [*LOCAL_HOSTS, *extra]
    if bound in ("0.0.0.0", "::", ""):
        hosts += [socket.gethostname(), socket.getfqdn()]
    else:
        hosts.append(f"[{bound}]" if ":" in bound else bound)
    return sorted({h.lower() for h in hosts if h})


class SameOriginPosts:
    """ASGI middleware: a request that changes state (not GET/HEAD/OPTIONS) carrying an Origin header
    other than http://<its own Host> is refused with 403."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] not in SAFE_METHODS:
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and origin.lower() != f"http://{headers.get('host', '')}".lower():
                await PlainTextResponse(f"origin {origin}: cross-origin posts are refused", status_code=403)(
                    scope, receive, send)
                return
        await self.app(scope, receive, send)


def _static(name: str) -> str:
    return resources.files("rlaif.annotate").joinpath("static", name).read_text(encoding="utf-8")


def esc(text) -> str:
    return html.escape(str(text), quote=True)


def _conversation(messages: list[dict]) -> str:
    return "\n".join(f'<div class="turn {esc(m["role"])}"><div class="role">{esc(m["role"])}</div>'
                     f'<div class="text">{esc(m["content"])}</div></div>' for m in messages)


def _scale() -> str:
    return "\n".join(f'<label class="point p{k}"><input type="radio" name="point" value="{k}" id="point{k}">'
                     f'<span class="key">{k}</span><span class="what">{esc(scale.LABELS[k])}</span></label>'
                     for k in scale.POINTS)


def render_page(store: Store, annotator: str, pair: dict | None, progress: dict, note: str = "") -> str:
    page = Template(_static("page.html"))
    fields = {"annotator": esc(annotator), "annotator_q": esc(quote(annotator)), "done": progress["done"],
              "total": progress["total"], "note": esc(note)}
    if pair is None:
        body = (f'<section class="finished"><h2>All done</h2><p>You have labeled {progress["done"]} of '
                f'{progress["total"]} pairs. Your labels are saved; you can close this page.</p></section>')
    else:
        flipped = store.flipped(annotator, pair["pair_id"])
        first, second = (pair["b"], pair["a"]) if flipped else (pair["a"], pair["b"])
        body = Template(_static("pair.html")).substitute(
            pair_id=esc(pair["pair_id"]), annotator=esc(annotator), conversation=_conversation(pair["prompt"]),
            question=esc(pair["question"]), reply_a=esc(first), reply_b=esc(second), scale=_scale())
    return page.substitute(fields, body=body)


def _html(text: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(text, status_code=status, headers={"Content-Security-Policy": CSP, "Cache-Control": "no-store"})


def create_app(store: Store, default_annotator: str, hosts: Sequence[str] = LOCAL_HOSTS) -> Starlette:
    """The app over `store`; `hosts`: the Host header values it answers (`allowed_hosts`)."""
    default_annotator = check_name(default_annotator)

    def who(request: Request, form: dict | None = None) -> str:
        name = (form or {}).get("annotator") or request.query_params.get("annotator") or default_annotator
        return check_name(name)

    async def page(request: Request) -> Response:
        try:
            annotator = who(request)
        except UserError as e:
            return _html(f"<p>{esc(e)}</p>", 400)
        pair, progress = await run_in_threadpool(store.next_pair, annotator)
        return _html(render_page(store, annotator, pair, progress, note=request.query_params.get("note", "")))

    async def label(request: Request) -> Response:
        body = (await request.body()).decode("utf-8", errors="replace")
        form = {k: v[-1] for k, v in parse_qs(body, keep_blank_values=True).items()}
        try:
            annotator = who(request, form)
        except UserError as e:
            return _html(f"<p>{esc(e)}</p>", 400)
        point = form.get("point") or None
        if point is not None and point not in {str(k) for k in scale.POINTS}:
            return _html(f"<p>point {esc(point)}: expected 1 to 8</p>", 400)
        try:
            await run_in_threadpool(lambda: store.record(
                annotator, form.get("pair_id", ""), point=int(point) if point else None,
                both_bad=form.get("both_bad") == "1", skip=form.get("skip") == "1",
                comment=form.get("comment", "")[:4000]))
        except KeyError:
            return _html(f"<p>no pair {esc(form.get('pair_id', ''))} in this database</p>", 404)
        except ValueError as e:
            target = f"/?annotator={quote(annotator)}&note={quote(str(e))}"
            return RedirectResponse(target, status_code=303)
        if request.headers.get("accept") == "application/json":
            return JSONResponse({"ok": True, **await run_in_threadpool(store.progress, annotator)})
        return RedirectResponse(f"/?annotator={quote(annotator)}", status_code=303)

    async def progress(request: Request) -> Response:
        try:
            annotator = who(request)
        except UserError as e:
            return JSONResponse({"error": str(e)}, status_code=400)
        return JSONResponse(await run_in_threadpool(store.progress, annotator))

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in _STATIC:
            return Response("not found", status_code=404)
        return Response(_static(name), media_type=_STATIC[name], headers={"Cache-Control": "no-store"})

    return Starlette(routes=[Route("/", page), Route("/label", label, methods=["POST"]),
                             Route("/api/progress", progress), Route("/static/{name}", static)],
                     middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(hosts), www_redirect=False),
                                 Middleware(SameOriginPosts)])
