"""Tiny random-weight models for the training tests (imported by tests/test_train_*.py).

A character-level tokenizer with a ChatML-like chat template and a 2-layer Llama of a few thousand
parameters: a training step takes milliseconds on CPU, and nothing is downloaded.
"""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import pytest

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<pad>", "<unk>", "<|im_start|>", "<|im_end|>"]
CHARS = list(string.ascii_lowercase + string.digits + " .,!?'\n:-")


def tiny_tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<|im_start|>", eos_token="<|im_end|>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama(tokenizer, seed: int = 0, hidden: int = 32, layers: int = 2, max_positions: int = 512):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=max_positions, pad_token_id=tokenizer.pad_token_id,
                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg)


def save_tiny(path: Path, seed: int = 0, max_positions: int = 512) -> Path:
    tok = tiny_tokenizer()
    model = tiny_llama(tok, seed, max_positions=max_positions)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared CPU run far faster on one thread (no oversubscription); restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("tiny") / "model")


def toy_prefs(n: int = 16, p: float = 1.0) -> list[dict]:
    """Conversational pairs where `chosen` is polite ("yes, gladly") and `rejected` curt ("no")."""
    topics = ["cats", "tea", "maps", "rain", "bees", "jazz", "kites", "salt", "ink", "moss",
              "owls", "figs", "wool", "clay", "reef", "dune"]
    out = []
    for i in range(n):
        t = topics[i % len(topics)]
        out.append({"prompt": [{"role": "user", "content": f"tell me about {t}"}],
                    "chosen": [{"role": "assistant", "content": f"yes, gladly: {t} are nice."}],
                    "rejected": [{"role": "assistant", "content": f"no. {t}?"}],
                    "p_chosen": p, "principle": "be helpful", "rationale": "", "labeler": "toy"})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def accelerate_launch(args: list[str], num_processes: int, cwd: Path, timeout: int = 150):
    """`accelerate launch --multi_gpu --num_processes N` on this CPU-only machine: torchrun starts N
    processes and the trainers' Accelerator runs them on CPU with gloo. (`--cpu --num_processes N`
    would start a single process: accelerate spawns several CPU processes only through mpirun.)"""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
           str(num_processes), "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(29500 + num_processes * 7 + (hash(str(cwd)) % 1000)), *args]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


WORDS = ["hi", "yo", "ok", "no", "up", "go", "be", "so"]


def vowel_reward(prompts, texts) -> list[float]:
    """Fraction of vowels in the response: in [0, 1], favours five tokens of the tiny vocabulary (the RL
    tests' checkable reward)."""
    return [sum(c in "aeiou" for c in t) / max(len(t), 1) for t in texts]


def read_log(folder: Path) -> list[dict]:
    """A run's train_log.jsonl rows."""
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def say_prompts(folder: Path, words=WORDS) -> Path:
    """A prompt file of one-turn "say WORD" prompts."""
    return write_jsonl(folder / "prompts.jsonl", [{"prompt": [{"role": "user", "content": f"say {w}"}]}
                                                  for w in words])
