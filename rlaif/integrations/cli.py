"""`rlaif serve-reward`: argument parsing and the command (the routes live in server.py).

`register(sub)` adds the command to rlaif's top-level parser.
"""

from __future__ import annotations

import os

from rlaif.errors import UserError

DEFAULT_PORT = 5000  # OpenRLHF's serve_rm default
DEFAULT_TOKEN_ENV = "RLAIF_REWARD_TOKEN"


def cmd_serve_reward(args) -> int:
    from rlaif.annotate.serve import bind
    from rlaif.backends import load_engine
    from rlaif.cli_common import engine_config
    from rlaif.constitution import load_constitution
    from rlaif.integrations.server import serve
    from rlaif.judge import Judge, make_config

    if not args.token_env.replace("_", "").isalnum():
        raise UserError(f"--token-env {args.token_env!r}: expected the name of an environment variable")
    token = os.environ.get(args.token_env) or None
    if args.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        print(f"serve-reward: warning: listening on {args.host} without a token; anyone who reaches this port can "
              f"use the judge (set {args.token_env} to require one)", flush=True)
    config = make_config(principles=args.principles, seed=args.seed, source="serve-reward options")
    constitution = load_constitution(args.constitution)  # a bad name fails before the model loads
    sock = bind(args.host, args.port)
    try:
        engine = load_engine(engine_config(args))
    except BaseException:
        sock.close()
        raise
    judge = Judge(engine, constitution, config)
    host, port = sock.getsockname()[:2]
    url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
    banner = (f"serve-reward: judge {judge.name} under constitution {constitution.name}, "
              f"{'requests gathered into batches' if args.batching else 'one request at a time'}, "
              f"{'token required (' + args.token_env + ')' if token else 'no token'}\n"
              f"  listening on {url}  (POST /get_reward for OpenRLHF: --reward.remote_url {url}/get_reward; "
              f"/score, /compare, /group; GET /health; Ctrl-C stops)")
    counts = serve(judge, sock, token, args.batching, banner, args.shutdown_timeout)
    print(f"serve-reward: stopped after {counts['requests']} requests ({counts['units']} replies judged)", flush=True)
    return 0


def register(sub) -> None:
    from rlaif.cli_common import engine_args, positive

    p = sub.add_parser("serve-reward", help="serve the judge as an HTTP reward (OpenRLHF's remote reward protocol, "
                       "/score, /compare, /group)")
    p.add_argument("--constitution", default="harmless", help="constitution YAML, or a shipped name "
                   "(default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s, this machine "
                   "only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default: %(default)s; 0 picks a free one)")
    p.add_argument("--token-env", default=DEFAULT_TOKEN_ENV, metavar="NAME",
                   help="environment variable holding the bearer token clients must send; unset or empty: no token "
                   "(default: %(default)s)")
    p.add_argument("--no-batching", dest="batching", action="store_false",
                   help="judge each request alone instead of gathering concurrent requests into one engine batch")
    p.add_argument("--shutdown-timeout", type=positive(float), default=120.0, metavar="S",
                   help="on Ctrl-C or SIGTERM, seconds the requests in flight get to finish (default: %(default)s)")
    p.add_argument("--principles", type=positive(int), default=None, help="principles each reply is judged under "
                   "(averaged; default 1)")
    p.add_argument("--seed", type=int, default=None, help="seed of the principle draw (default 0)")
    engine_args(p, role="judge")
    p.set_defaults(func=cmd_serve_reward)


__all__ = ["register", "cmd_serve_reward", "DEFAULT_PORT", "DEFAULT_TOKEN_ENV"]
