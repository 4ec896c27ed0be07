"""The `gguf` engine: any GGUF file in process through llama-cpp-python (`gguf:PATH`).

This is how a laptop runs a quantised 1-8B judge: llama.cpp's own quantised CPU kernels, no
dequantised copy of the weights. `model` is the path of a `.gguf` file, or `embedded:NAME` for the
GGUF an embedded model ships as.

Prompts: built exactly as the transformers engine builds them (`LocalPrompts`: the chat template
with the generation prompt, then the prefill in the assistant turn), with transformers' tokenizer
read from the GGUF (`AutoTokenizer.from_pretrained(dir, gguf_file=...)`, converted once and cached
beside the embedded models: the conversion takes seconds). So llama.cpp is fed the token ids the
transformers engine feeds on the same file (tests/engines/test_gguf_engine.py). Where transformers cannot
read the file's tokenizer (an architecture it does not know), llama.cpp's own tokenizer and the chat
template stored in the file are used (`GGUFTokenizer`); it can split some text differently (on
SmolLM2: "\n\n1" is one "\n\n" token for llama.cpp, two "\n" for transformers' conversion).

One sequence at a time: llama-cpp-python's high-level `Llama` evaluates a single sequence (seq 0),
so there is no cross-request batching here (`batch_size` is not used). What it does instead: the KV
cache holds the previous prompt, and a new prompt only evaluates what follows the prefix the two
share. Requests are visited in token order, so the labeler's two orders of a pair, or the
principles of an ensemble, follow each other and share their head. Reuse never changes a number:
a prompt is evaluated in blocks at fixed positions (tokens 0-63, 64-127, ..., and a last block of
its last 2 to 65 tokens), a prefix is reused only in whole blocks computed that way, so every token
is computed in the same ubatch as in a fresh evaluation and the logits are bit for bit those of a
fresh evaluation (tested). This needs llama.cpp's plain attention: with flash attention on, the
cells a longer previous prompt leaves free in the cache changed the logits by up to 0.9. A lone
last token takes another kernel than a block of them (option log-probs moved by up to 0.07 here),
hence the last block of at least two tokens.

`option_logprobs`: one evaluation per prompt, the next-token log-softmax read from llama.cpp's
logits of the last position, and logsumexp over every single-token spelling of an option.
`generate`: the model's logits sampled here (temperature, then top-p, as in transformers), seeded
per request and sample from the request's seed and prompt, so the same request gives the same text
in any batch and order; temperature 0 is greedy. Stops at the model's end-of-generation tokens,
`max_tokens`, or a stop string (cut from the text).

llama-cpp-python is an optional extra (`pip install 'rlaif-kit[gguf]'`); without it, or with one
older than 0.3.10 (the first with `llama_memory_seq_rm`, which the prefix reuse calls), the
constructor raises one clear `EngineError`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import time
import weakref
from pathlib import Path
from typing import Sequence

import numpy as np

from rlaif.backends.base import Completion, GenerationRequest, OptionLogprobs, OptionRequest
from rlaif.backends.local_prompts import LocalPrompts
from rlaif.config import EngineConfig
from rlaif.errors import EngineError

LLAMA_CPP_MISSING = ("the gguf engine needs llama-cpp-python: pip install 'rlaif-kit[gguf]' "
                     "(or pip install llama-cpp-python)")
# llama_get_memory / llama_memory_seq_rm (the KV-cache trim in `_evaluate`) first ship in 0.3.10;
# pyproject's gguf, server and dev extras ask for the same
LLAMA_CPP_NEEDED = (0, 3, 10)
# n_ctx when max_model_len is not set: the model's trained context, at most this. llama.cpp allocates
# the whole KV cache up front, and a 128k-token context costs 16 GiB for an 8B Llama.
DEFAULT_MAX_CONTEXT = 8192
# prompts are evaluated in blocks of this many tokens at fixed positions (see the module docstring);
# prefill ran as fast in blocks of 64 as of 512 here (282 vs 267 tok/s, SmolLM2-135M Q4_1, 2 cores)
BLOCK = 64


# ---------------------------------------------------------------------------------- the file


def resolve_gguf(spec: str) -> Path:
    """`embedded:NAME` -> that model's GGUF; otherwise a path, checked to exist and be a file."""
    if spec.startswith("embedded:"):
        from rlaif.backends.embedded import EMBEDDED, gguf_path

        name = spec.split(":", 1)[1]
        if name not in EMBEDDED:
            raise EngineError(f"gguf: unknown embedded model {name!r}; available: "
                              + ", ".join(f"embedded:{n}" for n in EMBEDDED))
        return gguf_path(name)
    path = Path(spec).expanduser()
    if not path.exists():
        raise EngineError(f"gguf: {spec}: file not found")
    if not path.is_file():
        raise EngineError(f"gguf: {spec}: is a folder; expected a .gguf file")
    return path


# GGUF metadata value types -> struct format (8: string, 9: array are read separately)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_header(path: Path) -> dict:
    """Check the GGUF magic and version and read `general.architecture` and the trained context
    length from the metadata, which llama.cpp only exposes after allocating the context.
    -> {"architecture": str | None, "context_length": int | None}."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
            if magic != b"GGUF":
                raise EngineError(f"gguf: {path}: not a GGUF file (it starts with {magic!r}; a GGUF file "
                                  "starts with b'GGUF')")
            version, _n_tensors, n_kv = struct.unpack("<IQQ", _read(f, 20, path))
            if version not in (2, 3):
                raise EngineError(f"gguf: {path}: GGUF version {version}; llama.cpp reads versions 2 and 3")
            found: dict = {"architecture": None, "context_length": None}
            for _ in range(n_kv):
                key = _read_str(f, path)
                kind = struct.unpack("<I", _read(f, 4, path))[0]
                if key == "general.architecture" and kind == 8:
                    found["architecture"] = _read_str(f, path)
                elif key == f"{found['architecture']}.context_length" and kind in _SCALARS:
                    found["context_length"] = int(_read_scalar(f, kind, path))
                else:
                    _skip_value(f, kind, path)
                if found["architecture"] and found["context_length"]:
                    break
            return found
    except OSError as e:
        raise EngineError(f"gguf: {path}: cannot read ({e.strerror})") from None


def _read(f, n: int, path: Path) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise EngineError(f"gguf: {path}: the file ends inside its metadata (truncated download?)")
    return data


def _read_str(f, path: Path) -> str:
    n = struct.unpack("<Q", _read(f, 8, path))[0]
    return _read(f, n, path).decode("utf-8", errors="replace")


def _read_scalar(f, kind: int, path: Path):
    fmt = "<" + _SCALARS[kind]
    return struct.unpack(fmt, _read(f, struct.calcsize(fmt), path))[0]


def _skip_value(f, kind: int, path: Path) -> None:
    if kind in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[kind]), 1)
    elif kind == 8:
        f.seek(struct.unpack("<Q", _read(f, 8, path))[0], 1)
    elif kind == 9:
        item, n = struct.unpack("<IQ", _read(f, 12, path))
        if item in _SCALARS:
            f.seek(n * struct.calcsize(_SCALARS[item]), 1)
        else:
            for _ in range(n):
                _skip_value(f, item, path)
    else:
        raise EngineError(f"gguf: {path}: unknown metadata value type {kind}; not a GGUF file llama.cpp reads")


# ---------------------------------------------------------------------------------- loading


def cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "amx_tile" in line.split() for line in f)
    except OSError:
        return False


def physical_cores() -> int:
    import psutil  # a dependency of accelerate

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(usable, psutil.cpu_count(logical=False) or usable))


def check_llama_cpp_version(version: str) -> None:
    """One EngineError when the installed llama-cpp-python is older than LLAMA_CPP_NEEDED; a version
    string we cannot read (a local build) is let through."""
    import re

    m = re.match(r"(\d+)\.(\d+)\.(\d+)", version or "")
    if m and tuple(int(x) for x in m.groups()) < LLAMA_CPP_NEEDED:
        needed = ".".join(map(str, LLAMA_CPP_NEEDED))
        raise EngineError(f"gguf: llama-cpp-python {version} is installed; the gguf engine needs >= {needed} "
                          f"(llama_memory_seq_rm): pip install -U 'llama-cpp-python>={needed}'")


def load_llama(path: Path, **kwargs):
    """`llama_cpp.Llama` on the file, quiet, with plain attention (flash attention off: see the
    module docstring). On CPUs with AMX, llama.cpp's extra (repacked) weight
    buffers are switched off: with llama-cpp-python 0.3.36 they crash in `llama_decode` on an Intel
    Xeon with AMX on any prompt longer than one token (see tests/support/servers/llama_cpp_server.py, which
    starts the server the same way). `Llama` takes no argument for it, so its default model params
    are patched for the duration of the load only."""
    try:
        import llama_cpp
        from llama_cpp import llama_cpp as low
    except ImportError:
        raise EngineError(LLAMA_CPP_MISSING) from None
    check_llama_cpp_version(getattr(llama_cpp, "__version__", ""))
    default = low.llama_model_default_params

    def without_extra_buffers():
        params = default()
        params.use_extra_bufts = False
        return params

    if cpu_has_amx():
        low.llama_model_default_params = without_extra_buffers
    try:
        return llama_cpp.Llama(str(path), verbose=False, flash_attn=False, **kwargs)
    except (ValueError, RuntimeError) as e:
        raise EngineError(f"gguf: {path}: llama.cpp could not load it ({str(e).splitlines()[0][:160]}); "
                          "an architecture this llama.cpp does not know, or a damaged or truncated file") from None
    finally:
        low.llama_model_default_params = default


def load_tokenizer(path: Path):
    """transformers' tokenizer for a GGUF file, as the transformers engine reads it from the same
    file; converted once and cached under the user cache dir (keyed by the file's size and the hash
    of its first MiB, where the metadata lives). None where transformers cannot read it."""
    from transformers import AutoTokenizer

    from rlaif.backends.embedded import cache_root

    with open(path, "rb") as f:
        head = hashlib.sha256(f.read(1 << 20)).hexdigest()[:16]
    target = cache_root() / "gguf-tokenizers" / f"{path.stem}-{path.stat().st_size}-{head}"
    if (target / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(target)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception:  # an architecture or tokenizer model transformers' GGUF reader does not know
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    except OSError:  # another process cached it first, or the cache is not writable: use it as is
        shutil.rmtree(tmp, ignore_errors=True)
    return tokenizer


class GGUFTokenizer:
    """The tokenizer interface `LocalPrompts` uses, over llama.cpp's vocabulary and the chat
    template stored in the GGUF (rendered by transformers' Jinja renderer, as `apply_chat_template`)."""

    def __init__(self, llm):
        self.llm = llm
        self.chat_template = llm.metadata.get("tokenizer.chat_template")
        self.eos_token_id = llm.token_eos()
        self.bos_token_id = llm.token_bos()
        self._template_tokens = {name: self.decode([i], skip_special_tokens=False)
                                 for name, i in (("bos_token", self.bos_token_id), ("eos_token", self.eos_token_id))
                                 if i >= 0}

    def apply_chat_template(self, chat: list[dict], tokenize: bool = False, add_generation_prompt: bool = True) -> str:
        from transformers.utils.chat_template_utils import render_jinja_template

        assert not tokenize, "render the text, then call the tokenizer"
        chat = [{k: v for k, v in m.items() if v is not None} for m in chat]
        rendered, _ = render_jinja_template([chat], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt, **self._template_tokens)
        return rendered[0]

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        return {"input_ids": self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.llm.detokenize(list(ids), special=not skip_special_tokens).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------- the engine


class GGUFEngine(LocalPrompts):
    name = "gguf"
    prefix_reuse = True  # a prompt after another that it continues evaluates only its new blocks

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.model = cfg.model
        self.path = resolve_gguf(cfg.model)
        header = read_gguf_header(self.path)
        trained = header["context_length"] or DEFAULT_MAX_CONTEXT
        threads = cfg.threads or physical_cores()
        started = time.perf_counter()
        self.llm = load_llama(self.path, n_ctx=cfg.max_model_len or min(trained, DEFAULT_MAX_CONTEXT),
                              n_threads=threads, n_threads_batch=threads)
        self.load_seconds = time.perf_counter() - started
        # freed by close(), or when the engine is collected, or at exit before llama_cpp's globals go
        self._free = weakref.finalize(self, self.llm.close)
        from llama_cpp import llama_cpp as low

        self._low = low
        self._vocab = low.llama_model_get_vocab(self.llm.model)
        self._n_vocab = self.llm.n_vocab()
        self.tokenizer = load_tokenizer(self.path) or GGUFTokenizer(self.llm)
        self.context_length = self.llm.n_ctx()
        self.threads = threads
        self._option_ids: dict[str, list[int]] = {}
        self._blocks_cached = 0  # leading cached tokens that were evaluated in whole blocks
        self.counters = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0,
                         "evaluated_tokens": 0, "reused_tokens": 0, "seconds": 0.0}

    def __repr__(self) -> str:
        return f"GGUFEngine(model={self.model!r})"

    # ------------------------------------------------------------------ the context

    def _eval(self, ids: list[int]) -> None:
        """Leave the context holding exactly `ids`, with the logits of the last one. `ids` is
        evaluated in blocks of BLOCK tokens at fixed positions, the last block holding its last 2
        to BLOCK + 1 tokens; the cache keeps the whole blocks it holds from the previous prompt that
        `ids` starts with, and the rest is evaluated as a fresh evaluation would."""
        llm = self.llm
        last = max(0, (len(ids) - 2) // BLOCK * BLOCK)  # where this prompt's last block starts
        n = min(llm.n_tokens, self._blocks_cached, last)
        differ = np.flatnonzero(llm.input_ids[:n] != np.asarray(ids[:n], dtype=llm.input_ids.dtype))
        keep = int(differ[0]) if differ.size else n
        keep -= keep % BLOCK
        if keep < llm.n_tokens and not self._low.llama_memory_seq_rm(self._low.llama_get_memory(llm.ctx), -1, keep, -1):
            llm.reset()  # recurrent models cannot drop the end of a sequence: start over
            keep = 0
        llm.n_tokens = keep
        for start in range(keep, last, BLOCK):
            llm.eval(ids[start:start + BLOCK])
        llm.eval(ids[last:])
        self._blocks_cached = last
        self.counters["evaluated_tokens"] += len(ids) - keep
        self.counters["reused_tokens"] += keep

    def _logits(self) -> np.ndarray:
        """The next-token logits after the last evaluated token (a copy)."""
        ptr = self._low.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._n_vocab,)).astype(np.float64)

    # ------------------------------------------------------------------ generate (prompts: LocalPrompts)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        started = time.perf_counter()
        encoded = self._generation_inputs(requests)
        results: list[Completion | None] = [None] * len(requests)
        for i in sorted(range(len(requests)), key=lambda i: encoded[i]):  # neighbours share prefixes
            r, ids = requests[i], encoded[i]
            texts, reasons, used = [], [], 0
            for j in range(r.n):
                rng = np.random.default_rng(sample_seed(r.seed, ids, j)) if r.temperature > 0 else None
                text, reason, n = self._sample(ids, r, rng)
                texts.append(text)
                reasons.append(reason)
                used += n
            results[i] = Completion(texts, len(ids), used, reasons)
            self.counters["prompt_tokens"] += len(ids)
            self.counters["completion_tokens"] += used
        self.counters["requests"] += len(requests)
        self.counters["seconds"] += time.perf_counter() - started
        return results  # type: ignore[return-value]

    def _sample(self, ids: list[int], r: GenerationRequest, rng) -> tuple[str, str, int]:
        """One sample: (text, finish reason, generated tokens, not counting an end token)."""
        self._eval(ids)
        new: list[int] = []
        reason = "length"
        for step in range(r.max_tokens):
            token = pick_token(self._logits(), r.temperature, r.top_p, rng)
            if self._low.llama_vocab_is_eog(self._vocab, token):
                reason = "stop"
                break
            new.append(token)
            if r.stop and any(s in self.tokenizer.decode(new) for s in r.stop):
                reason = "stop"
                break
            if step + 1 < r.max_tokens:
                self.llm.eval([token])
                self.counters["evaluated_tokens"] += 1
        text = self.tokenizer.decode(new)
        for s in r.stop or ():
            if s in text:
                text = text[:text.index(s)]
        return text.strip(), reason, len(new)

    # ------------------------------------------------------------------ option scoring

    def option_logprobs(self, requests: Sequence[OptionRequest], options: Sequence[str]) -> list[OptionLogprobs]:
        started = time.perf_counter()
        option_ids, encoded = self._scoring_inputs(requests, options)
        results: list[OptionLogprobs | None] = [None] * len(requests)
        for i in sorted(range(len(requests)), key=lambda i: encoded[i]):  # neighbours share prefixes
            self._eval(encoded[i])
            logp = log_softmax(self._logits())
            results[i] = OptionLogprobs({o: float(np.logaddexp.reduce(logp[option_ids[o]])) for o in options})
            self.counters["prompt_tokens"] += len(encoded[i])
        self.counters["requests"] += len(requests)
        self.counters["seconds"] += time.perf_counter() - started
        return results  # type: ignore[return-value]

    def stats(self) -> dict:
        return {"engine": self.name, "model": self.model, "path": str(self.path), "threads": self.threads,
                "context_length": self.context_length,
                **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.counters.items()}}

    def close(self) -> None:
        self.llm = None
        self._free()


# ---------------------------------------------------------------------------------- sampling


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max()
    return z - np.log(np.exp(z).sum())


def pick_token(logits: np.ndarray, temperature: float, top_p: float, rng) -> int:
    """Greedy at temperature 0; else softmax(logits / T), cut to the smallest set of most likely
    tokens whose probability reaches top_p, and one draw from it."""
    if temperature <= 0:
        return int(np.argmax(logits))
    p = np.exp(log_softmax(logits / temperature))
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        cum = np.cumsum(p[order])
        keep = order[: int(np.searchsorted(cum, top_p)) + 1]
        cut = np.zeros_like(p)
        cut[keep] = p[keep]
        p = cut
    cdf = np.cumsum(p)
    return int(min(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"), len(p) - 1))


def sample_seed(seed: int | None, ids: Sequence[int], j: int) -> int:
    """The seed of sample j of a request: from its own seed and prompt, nothing else."""
    h = hashlib.sha256(f"{seed}|{j}|".encode())
    h.update(np.asarray(ids, dtype=np.int64).tobytes())
    return int.from_bytes(h.digest()[:8], "little")


__all__ = ["GGUFEngine", "GGUFTokenizer", "read_gguf_header", "resolve_gguf", "load_llama"]
