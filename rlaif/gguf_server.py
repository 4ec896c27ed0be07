"""`rlaif serve-gguf MODEL [--host 127.0.0.1] [--port 8000]`: a GGUF model behind the OpenAI protocol.

llama-cpp-python's own server (`python -m llama_cpp.server`, from `rlaif-kit[server]`), started
with llama.cpp's extra CPU buffer types switched off (`llama_model_params.use_extra_bufts = False`,
what llama.cpp's own tools call `--no-repack`). Why: with llama-cpp-python 0.3.36, the repacked
weight layouts that those buffer types hold crash the process (a general protection fault in
libggml-cpu.so inside `llama_decode`) on the first prompt longer than one token on Intel Xeons with
AMX, while the same wheel runs on AMD EPYC. llama-cpp-python's server has no setting for it, and
`llama_cpp.Llama` takes no argument for it: it reads `llama_cpp.llama_model_default_params()` when
it loads a model, so that function is wrapped for as long as the server runs. The plain kernels
run on every CPU; on CPUs where repacking works, it only changes speed (--repack turns it back on).

Clients use it as the `openai` engine: `--judge openai:NAME --base-url http://HOST:PORT/v1`, where
NAME is the --alias (default: the file's name without .gguf). Chat completions return
`logprobs`/`top_logprobs`, which option scoring reads.

`llama_cpp_server_main(argv)` runs llama_cpp.server's own command line the same way, for callers
that pass its flags (tests/support/servers/llama_cpp_server.py).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

from rlaif.errors import UserError

SERVER_MISSING = ("rlaif serve-gguf needs llama-cpp-python's server: pip install 'rlaif-kit[server]' "
                  "(llama-cpp-python builds llama.cpp from source: a C/C++ compiler and cmake are needed)")
DEFAULT_PORT = 8000
DEFAULT_CONTEXT = 4096


@contextlib.contextmanager
def extra_buffers_off(enabled: bool = True):
    """While inside: every model llama-cpp-python loads has llama.cpp's extra (repacked) CPU buffer
    types off. A no-op when `enabled` is False."""
    from llama_cpp import llama_cpp as low

    default = low.llama_model_default_params
    if not enabled:
        yield
        return

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = without_extra_buffers
    try:
        yield
    finally:
        low.llama_model_default_params = default


def _import_server():
    try:
        import llama_cpp.server.app as app
        import llama_cpp.server.settings as settings
    except ImportError as e:
        raise UserError(f"{SERVER_MISSING} ({e})") from None
    return app, settings


def llama_cpp_server_main(argv: list[str]) -> int:
    """`python -m llama_cpp.server ARGV` with the extra buffer types off."""
    _import_server()
    import llama_cpp.server.__main__ as server_main

    saved = sys.argv
    sys.argv = ["python -m llama_cpp.server", *argv]
    try:
        with extra_buffers_off():
            server_main.main()
    finally:
        sys.argv = saved
    return 0


def model_settings(path: Path, alias: str, n_ctx: int, threads: int, settings_module):
    return settings_module.ModelSettings(
        model=str(path), model_alias=alias, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
        flash_attn=False,  # plain attention, as the gguf engine (rlaif/backends/gguf_engine.py)
        logits_all=True,  # what chat completions' logprobs are read from
        verbose=False)


def serve(model: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, n_ctx: int | None = None,
          threads: int | None = None, alias: str | None = None, repack: bool = False) -> None:
    """Load the model, listen on host:port (0: a free port) and serve until interrupted."""
    from rlaif.annotate.serve import bind
    from rlaif.backends.gguf_engine import physical_cores, read_gguf_header, resolve_gguf

    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: expected 0 (a free port) to 65535")
    path = resolve_gguf(model)
    header = read_gguf_header(path)  # not a GGUF file, or a cut one: one line before llama.cpp starts
    trained = header.get("context_length") or DEFAULT_CONTEXT
    n_ctx = n_ctx or min(trained, DEFAULT_CONTEXT)
    threads = threads or physical_cores()
    alias = alias or path.name.removesuffix(".gguf")
    app_module, settings_module = _import_server()
    sock = bind(host, port)  # a port in use is one line, before the model loads
    try:
        with extra_buffers_off(not repack):
            try:
                app = app_module.create_app(
                    server_settings=settings_module.ServerSettings(host=host, port=sock.getsockname()[1]),
                    model_settings=[model_settings(path, alias, n_ctx, threads, settings_module)])
            except (ValueError, RuntimeError) as e:
                raise UserError(f"serve-gguf: {path}: llama.cpp could not load it "
                                f"({str(e).splitlines()[0][:160]})") from None
            _run(app, sock, host, alias, path, n_ctx, threads, repack)
    finally:
        sock.close()


def _run(app, sock, host, alias, path, n_ctx, threads, repack) -> None:
    import uvicorn

    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    layouts = "on (--repack)" if repack else "off (they crash llama-cpp-python 0.3.36 on AMX CPUs)"
    print(f"serve-gguf: {path} as model {alias!r}, context {n_ctx}, {threads} threads; "
          f"llama.cpp's repacked weight layouts {layouts}\n"
          f"  OpenAI API at http://{shown}:{port}/v1  (e.g. --judge openai:{alias} --base-url "
          f"http://{shown}:{port}/v1; Ctrl-C stops)", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


def cmd_serve_gguf(args) -> int:
    serve(args.model, host=args.host, port=args.port, n_ctx=args.n_ctx, threads=args.threads, alias=args.alias,
          repack=args.repack)
    return 0


def register(sub) -> None:
    """Add `serve-gguf` to rlaif's top-level parser."""
    from rlaif.cli_common import positive

    p = sub.add_parser("serve-gguf", help="serve a GGUF model behind the OpenAI protocol (llama-cpp-python's "
                       "server, made safe for every CPU) for the openai engine",
                       description=__doc__.split("\n\n")[1].replace("\n", " "))
    p.add_argument("model", metavar="MODEL", help="a .gguf file, or embedded:NAME for an embedded model's GGUF")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks a free port")
    p.add_argument("--n-ctx", type=positive(int), default=None,
                   help=f"context length (default: the model's trained context, at most {DEFAULT_CONTEXT})")
    p.add_argument("--threads", type=positive(int), default=None, help="CPU threads (default: the physical cores)")
    p.add_argument("--alias", default=None, help="the model name clients send (default: the file name without .gguf)")
    p.add_argument("--repack", action="store_true",
                   help="keep llama.cpp's repacked weight layouts (faster on some CPUs; crashes on AMX with "
                        "llama-cpp-python 0.3.36)")
    p.set_defaults(func=cmd_serve_gguf)
