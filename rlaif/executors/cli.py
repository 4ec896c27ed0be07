"""`--executor ray` for `rlaif label`, `generate` and `critique`: flags, and the engine a command
hands its stage (a real one for the local loop, a `RemoteEngine` that the Ray actors build)."""

from __future__ import annotations

import argparse

from rlaif.errors import UserError
from rlaif.executors import ExecutorConfig, RemoteEngine


def add_executor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("executor")
    g.add_argument("--executor", choices=("local", "ray"), default="local",
                   help="run the batches in this process (local) or on Ray Data actors, one engine each "
                        "(ray; needs the rlaif-kit[ray] extra)")
    g.add_argument("--ray-address", metavar="ADDR", help="with --executor ray: the cluster (HOST:6379, "
                   "ray://HOST:10001, or auto); default: start a local Ray on this machine")
    g.add_argument("--ray-actors", type=int, metavar="N", help="with --executor ray: actors, each holding one "
                   "engine (default 2)")
    g.add_argument("--ray-cpus-per-actor", type=float, metavar="C", help="with --executor ray: CPUs per actor "
                   "(default 1; the engine's torch threads)")
    g.add_argument("--ray-base-urls", metavar="URL,URL", type=lambda v: [u for u in v.split(",") if u],
                   help="with --executor ray and an openai: engine: a fleet of OpenAI-compatible servers; actor k "
                        "talks to the k-th (mod their number) instead of --base-url")
    g.add_argument("--ray-block-records", type=int, metavar="N", help="with --executor ray: at most N records per "
                   "Ray Data block, one task (default 256; whole batches, and at least 4 blocks per actor)")
    g.add_argument("--ray-gpus-per-actor", type=float, metavar="G", help="with --executor ray: GPUs per actor "
                   "(1 for a vllm: judge per GPU)")


def executor_config(args) -> ExecutorConfig | None:
    names = ("address", "actors", "cpus_per_actor", "gpus_per_actor", "base_urls", "block_records")
    given = {k: getattr(args, f"ray_{k}", None) for k in names}
    given = {k: v for k, v in given.items() if v is not None}
    if args.executor != "ray":
        if given:
            raise UserError(f"--ray-{next(iter(given)).replace('_', '-')} applies with --executor ray")
        return None
    from rlaif.config import validate

    return validate(ExecutorConfig, {"kind": "ray", **given}, "--executor ray flags")


def engine_for(args, engine_cfg, executor: ExecutorConfig | None):
    """The engine the stage is built over: loaded here for the local loop; for Ray, a stand-in whose
    real engine each actor loads from the same EngineConfig."""
    if executor is None:
        from rlaif.backends import load_engine

        return load_engine(engine_cfg)
    from rlaif.executors.ray_data import import_ray

    if executor.base_urls and engine_cfg.kind != "openai":
        raise UserError(f"--ray-base-urls: a fleet of OpenAI-compatible servers serves an openai: engine, "
                        f"not {engine_cfg.kind}:{engine_cfg.model}")
    import_ray()  # a missing extra is one line before anything else happens
    return RemoteEngine(engine_cfg)


__all__ = ["add_executor_args", "executor_config", "engine_for"]
