"""What tests import by name: the repository's paths, the embedded model's spec, a tiny random Llama
on a real tokenizer, and a runner for the `rlaif` command. (Fixtures live in tests/conftest.py and
tests/support/train_fixtures.py; tests/support is on pytest's pythonpath.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
HH_DEV = ROOT.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-dev.jsonl.gz"
EMBEDDED = "embedded:smollm2-135m-instruct"


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


def run_cli(*args, env=None, timeout=600, cwd=None) -> subprocess.CompletedProcess:
    """Run `rlaif ARGS...` as a real subprocess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "rlaif.cli", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=full_env, cwd=cwd or ROOT)


def build_tiny_gpt2(tokenizer, seed: int = 0):
    """A random-weight GPT-2 (learned absolute position embeddings) with the embedded tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=32, n_layer=2, n_head=4,
                     bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                     pad_token_id=tokenizer.pad_token_id, initializer_range=0.2)
    return GPT2LMHeadModel(cfg).eval()


def stop_process(proc: subprocess.Popen, grace: float = 15) -> None:
    """Stop a server the test started: SIGTERM, then SIGKILL after `grace` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
