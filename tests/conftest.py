"""Shared fixtures: the real embedded model, tiny random-weight models with its real tokenizer,
the HH-RLHF dev file from ../shared (skipped when absent), and a CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import EMBEDDED, HH_DEV, build_tiny_llama

pytest_plugins = ["train_fixtures", "pipeline_fixtures", "server_fixtures"]  # tests/support/train_fixtures.py: the tiny training models

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
