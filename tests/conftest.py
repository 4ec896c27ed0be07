"""Shared fixtures: the real embedded model, tiny random-weight models with its real tokenizer,
the HH-RLHF dev file from ../shared (skipped when absent), and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HH_DEV = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-dev.jsonl.gz"
EMBEDDED = "embedded:smollm2-135m-instruct"

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    from rlaif.backends.embedded import embedded_model_dir

    return embedded_model_dir(EMBEDDED.split(":", 1)[1])


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedded_dir)


def build_tiny_llama(tokenizer, seed: int = 0, layers: int = 2, hidden: int = 32):
    """A random-weight Llama with the embedded model's real tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=False, initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama saved as a normal HF model folder (a local-dir model spec)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    build_tiny_llama(tokenizer).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def embedded_engine():
    from rlaif.backends import load_engine
    from rlaif.config import parse_model_spec

    engine = load_engine(parse_model_spec(EMBEDDED))
    yield engine
    engine.close()


@pytest.fixture
def hh_dev() -> Path:
    if not HH_DEV.exists():
        pytest.skip(f"human labels not available: {HH_DEV} is absent (it ships in the project's shared/ data)")
    return HH_DEV


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run `rlaif ARGS...` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "rlaif.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)
