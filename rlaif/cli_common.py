"""What every `rlaif` command module shares: the engine flags and the EngineConfig they make, the
model-spec help text, the positive-number flag type and the judge-accuracy threshold. Used by cli.py, cli_train.py and the
commands registered from other packages."""

from __future__ import annotations

import argparse
import os

from rlaif.config import DEFAULT_MODEL
from rlaif.errors import UserError


SPEC_HELP = ("embedded:NAME, a model folder, a hub id, vllm:ID, openai:NAME (with --base-url) or "
             "gguf:PATH (a GGUF file run in process by llama.cpp)")


def engine_args(p: argparse.ArgumentParser, role: str = "policy",
                default_model: str | None = DEFAULT_MODEL) -> None:
    """Engine flags for a command that runs one role; `--ROLE SPEC` names its model (`--model`
    is the older spelling of the same flag)."""
    from rlaif.config import EngineConfig

    d = EngineConfig()  # one source for the engine defaults
    g = p.add_argument_group(f"engine ({role})")
    g.add_argument(f"--{role}", "--model", dest="model", default=default_model, metavar="SPEC",
                   help=f"the {role} model: {SPEC_HELP} (default: %(default)s)")
    g.add_argument("--base-url", help="openai engine: server URL, e.g. http://127.0.0.1:8000/v1")
    g.add_argument("--api-key-env", default=d.api_key_env, help="openai engine: env var holding the key")
    g.add_argument("--batch-size", type=positive(int), default=d.batch_size,
                   help="requests per engine batch (default: %(default)s)")
    g.add_argument("--concurrency", type=positive(int), default=d.concurrency, help="openai engine: requests in flight")
    g.add_argument("--timeout", type=positive(float), default=d.timeout, help="openai engine: seconds per request attempt")
    g.add_argument("--max-retries", type=int, default=d.max_retries,
                   help="openai engine: retries per request after the first try")
    g.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    g.add_argument("--tokenizer", help="openai engine: the served model's tokenizer (embedded:NAME, a dir, a hub id); "
                   "option scoring then renders the chat template here and prefills the assistant turn over "
                   "/v1/completions, as llama.cpp's and vLLM's servers allow")
    g.add_argument("--prefill-mode", default=d.prefill_mode,
                   choices=["auto", "completions", "continue_final_message", "user_turn"],
                   help="openai engine: how option scoring reaches the assistant turn (default: %(default)s)")


def engine_config(args):
    from rlaif.config import EngineConfig, parse_model_spec

    base = EngineConfig(device=args.device, batch_size=args.batch_size, concurrency=args.concurrency,
                        api_key_env=args.api_key_env, timeout=args.timeout, max_retries=args.max_retries,
                        tokenizer=args.tokenizer, prefill_mode=args.prefill_mode)
    kind = parse_model_spec(args.model).kind
    if (args.tokenizer or args.prefill_mode != "auto") and kind != "openai":
        raise UserError(f"--tokenizer and --prefill-mode are for the openai engine, but the model {args.model} "
                        f"runs on the {kind} engine; drop them")
    if args.base_url and kind != "openai":
        raise UserError(f"--base-url is for the openai engine, but the model {args.model} runs on the "
                        f"{kind} engine; name it openai:NAME, or drop --base-url")
    if kind == "openai":
        base = base.model_copy(update={"base_url": args.base_url or os.environ.get("OPENAI_BASE_URL")})
    return parse_model_spec(args.model, base)  # a flag for another engine's setting: one line naming both


def positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
        return value

    return parse



def judge_accuracy(text: str) -> float:
    """--require-judge-accuracy X: an accuracy in (0.5, 1] the judge must reach."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"--require-judge-accuracy {text!r}: expected a number in (0.5, 1]") from None
    if not 0.5 < value <= 1:
        raise UserError(f"--require-judge-accuracy {text}: expected a number in (0.5, 1] (an accuracy a judge "
                        "must beat; 0.5 is chance)")
    return value


__all__ = ["SPEC_HELP", "engine_args", "engine_config", "judge_accuracy", "positive"]
