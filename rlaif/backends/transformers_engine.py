"""The local engine: a Hugging Face causal LM on CPU or CUDA.

Generation: requests with the same sampling settings are sorted by prompt length, cut into
batches of `batch_size`, left-padded and generated together under `torch.inference_mode`.
Sampling is seeded per batch from the requests' own seeds, so the same requests give the same
texts on every run. `option_logprobs` is one forward pass per batch: the chat prompt plus the
prefill, and the next-token log-softmax read at the options' single-token spellings. Position ids
count from each row's first real token, so a left-padded prompt scores as it does alone (models
with absolute positions, e.g. GPT-2, would otherwise see shifted positions).

Prefix reuse: the prompts of one `option_logprobs` call are put in a tree of shared token prefixes
(`rlaif.backends.prefix_tree`; runs of at least `min_shared_prefix` tokens). Each node is prefilled
once, batched with the other nodes of its level, on top of its parent's key/value cache (a
transformers `DynamicCache` whose rows are picked, and repeated, per child). A batch is laid out as

    [parent's cache: its own padding, its tokens] [this node's padding] [this node's tokens]

with the attention mask zero on every padding column and position ids counted over real tokens only,
so each row sees exactly its prompt, at its positions, as in one unpadded forward; a prompt's option
scores are read at its node's last column. `min_shared_prefix = 0` runs every prompt whole.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import time
from itertools import groupby
from typing import Sequence

import torch
from transformers import DynamicCache, StoppingCriteriaList, StopStringCriteria
from transformers.cache_utils import DynamicLayer

from rlaif.backends.base import (
    Completion, GenerationRequest, OptionLogprobs, OptionRequest,
)
from rlaif.backends.local_prompts import LocalPrompts
from rlaif.backends.prefix_tree import Node, computed_tokens, is_shared, prefix_tree
from rlaif.config import EngineConfig
from rlaif.errors import EngineError
from rlaif.tensors import positions


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise EngineError(f"device {device!r} asked for, but no CUDA GPU is available here")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return getattr(torch, dtype)
    except AttributeError:
        raise EngineError(f"dtype {dtype!r}: expected auto, float32, bfloat16 or float16") from None


log = logging.getLogger(__name__)

# the prefix-reuse probe's pieces (`probe_sequences` puts them together): two roots of different lengths,
# continuations, and a continuation of a continuation
PROBE_ROOTS = ("A short note about the weather in the hills this week:", "Notes:")
PROBE_TAILS = (" rain on Monday.", " clear skies", " from Tuesday until the weekend, then wind.", " all week.")
# rows per forward in the probe: small enough that a level's children go in several batches
PROBE_ROWS = 2


def probe_sequences(tokenizer) -> list[list[int]]:
    """The probe's prompts, as token lists put together piece by piece (so the tree has the same
    shape under any tokenizer): two roots of different lengths (the top-level batch is left-padded),
    continuations of each, and, under `long + " clear skies"` (itself a prompt), two more: a
    three-level tree whose middle batch carries its parents' padding. In batches of `PROBE_ROWS`, the
    second level splits in two, so one batch continues a copy of its parents' cache (the copy path)
    and the last takes that cache over."""
    def ids(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    long, short = (ids(t) for t in PROBE_ROOTS)
    rain, clear, tuesday, week = (ids(t) for t in PROBE_TAILS)
    return [long, long + rain, long + clear, long + clear + tuesday, long + clear + week,
            short + rain, short + tuesday]

# a shared run shorter than this is recomputed: below it, the extra forward pass and the cache copies
# cost about what the run's own prefill would
MIN_SHARED_PREFIX = 32


class TransformersEngine(LocalPrompts):
    name = "transformers"

    def __init__(self, cfg: EngineConfig, model=None, tokenizer=None, min_shared_prefix: int = MIN_SHARED_PREFIX):
        self.cfg = cfg
        self.min_shared_prefix = min_shared_prefix  # 0: no prefix reuse in option scoring
        self.model_spec = cfg.model
        self.device = pick_device(cfg.device)
        if model is None:
            model, tokenizer = self._load(cfg.model)
        self.tokenizer = tokenizer
        self.net = model.to(self.device).eval()
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self.context_length = getattr(model.config, "max_position_embeddings", None) or 2048
        # left padding shifts every row; models with absolute positions (GPT-2) need them counted from
        # each row's first real token, as `generate` does
        takes = inspect.signature(self.net.forward).parameters
        # transformers 5 passes position_ids and past_key_values through **kwargs on some models: a
        # forward that takes **kwargs is asked, and the prefix-reuse probe finds out whether it listens
        self._takes_positions = "position_ids" in takes or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values())
        self._prefix_probe: tuple[bool, str] | None = None  # (works, why), found on first use
        # transformers 5.2x renamed forward's `past_key_values` to `cache` (the old name is a deprecated alias)
        self._cache_kwarg = "cache" if "cache" in takes else "past_key_values"
        self._option_ids: dict[str, list[int]] = {}
        self._stop_criteria: dict[tuple[str, ...], object] = {}
        self.counters = {"requests": 0, "prompt_tokens": 0, "cached_prompt_tokens": 0, "completion_tokens": 0,
                         "forward_passes": 0, "seconds": 0.0}

    @property
    def model(self) -> str:
        return self.model_spec

    @property
    def prefix_reuse(self) -> bool:
        """Whether one option-scoring call computes a prefix its prompts share once (callers then
        put continuations of a prompt in the same call as the prompt)."""
        return self.min_shared_prefix > 0 and self._reuses_prefixes

    @property
    def _reuses_prefixes(self) -> bool:
        if self._prefix_probe is None:
            self._prefix_probe = self._probe_prefix_reuse()
            if not self._prefix_probe[0]:
                log.warning("rlaif: prefix reuse is off for %s: %s", self.model, self._prefix_probe[1])
        return self._prefix_probe[0]

    def prefix_reuse_status(self) -> dict:
        """What the manifest records: whether prefix reuse is on, and why (or why not)."""
        if self.min_shared_prefix <= 0:
            return {"prefix_reuse": False, "prefix_reuse_reason": "min_shared_prefix is 0 (turned off by the caller)"}
        if self._prefix_probe is None and self.net is None:
            return {"prefix_reuse": None, "prefix_reuse_reason": "not probed (the engine scored no options)"}
        on = self._reuses_prefixes
        return {"prefix_reuse": on, "prefix_reuse_reason": self._prefix_probe[1]}

    @torch.inference_mode()
    def _probe_prefix_reuse(self) -> tuple[bool, str]:
        """Find out, by doing it once, whether this model gives a prompt's logits when the prompt is
        prefilled on top of a shared prefix's cache: the prompts of `probe_sequences` (a left-padded
        parent batch, the copy path of children split over batches, a three-level tree) are scored
        through the prefix tree in batches of `PROBE_ROWS` and each whole, and the next-token
        log-probabilities compared over the whole vocabulary. A model's signature says too little:
        transformers 5 takes the cache through **kwargs on some models."""
        if not self._takes_positions:
            return False, "its forward takes no position_ids (padding sits between a prefix and its continuation)"
        if not _plain_dynamic_cache(self.net.config):
            return False, ("its cache is not plain full-attention DynamicLayers (a sliding window or hybrid "
                           "cache would count the padding as distance)")
        seqs = probe_sequences(self.tokenizer)
        counters = dict(self.counters)
        got: dict[int, torch.Tensor] = {}
        try:
            self._prefill_tree(prefix_tree(seqs, 1), None, lambda logp, row, i: got.__setitem__(i, logp[row]),
                               max_rows=PROBE_ROWS)
            want = self._whole_logps(seqs)
        except Exception as e:  # a model that rejects the cache or the positions: say which way it failed
            return False, f"a forward on top of a cached prefix failed ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
        finally:
            self.counters = counters
        if sorted(got) != list(range(len(seqs))):
            return False, "the prefix tree did not read every probe prompt"
        gap = max((got[i] - want[i]).abs().max().item() for i in range(len(seqs)))
        tol = 1e-3 if next(self.net.parameters()).dtype == torch.float32 else 5e-2
        if not gap <= tol:
            return False, (f"log-probs after a cached prefix differ from the whole prompt's by {gap:.3g} "
                           f"(tolerance {tol:g})")
        return True, f"a cached prefix gives the whole prompt's log-probs (max difference {gap:.1e})"

    @classmethod
    def from_pretrained_objects(cls, model, tokenizer, cfg: EngineConfig | None = None):
        """Wrap an already-built model and tokenizer (tests build tiny random-weight ones)."""
        cfg = cfg or EngineConfig(model=getattr(model.config, "name_or_path", "") or "in-memory", device="cpu")
        return cls(cfg, model=model, tokenizer=tokenizer)

    def _load(self, spec: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from rlaif.backends.embedded import resolve_model_dir

        path = resolve_model_dir(spec)
        dtype = pick_dtype(self.cfg.dtype, self.device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise EngineError(f"model {spec!r} at {path} could not be loaded: {str(e).splitlines()[0]}") from None
        return model, tokenizer

    # ------------------------------------------------------------------ prompts (the rest: LocalPrompts)

    def _pad_left(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------------ generate

    @torch.inference_mode()
    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        started = time.perf_counter()
        encoded = self._generation_inputs(requests)
        results: list[Completion | None] = [None] * len(requests)

        def settings(i):
            r = requests[i]
            return (r.temperature > 0, r.temperature, r.top_p, r.max_tokens, tuple(r.stop or ()), r.n, r.pure)

        order = sorted(range(len(requests)), key=lambda i: (settings(i), -len(encoded[i])))
        for _, group in groupby(order, key=settings):
            group = list(group)
            for start in range(0, len(group), self.cfg.batch_size):
                chunk = group[start:start + self.cfg.batch_size]
                for i, completion in zip(chunk, self._generate_chunk([requests[i] for i in chunk],
                                                                     [encoded[i] for i in chunk])):
                    results[i] = completion
        self.counters["requests"] += len(requests)
        self.counters["seconds"] += time.perf_counter() - started
        return results  # type: ignore[return-value]

    def _generate_chunk(self, reqs: list[GenerationRequest], rows: list[list[int]]) -> list[Completion]:
        r0 = reqs[0]
        ids, mask = self._pad_left(rows)
        sample = r0.temperature > 0
        kwargs = dict(max_new_tokens=r0.max_tokens, do_sample=sample, num_return_sequences=r0.n,
                      pad_token_id=self.tokenizer.pad_token_id, eos_token_id=self.tokenizer.eos_token_id)
        if sample:
            kwargs.update(temperature=r0.temperature, top_p=r0.top_p, top_k=0)
            if r0.pure:
                kwargs.update(pure_sampling_kwargs())
            torch.manual_seed(_chunk_seed(reqs, rows))
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        if r0.stop:
            kwargs.update(stopping_criteria=StoppingCriteriaList([self._stop_strings(tuple(r0.stop))]))
        out = self.net.generate(input_ids=ids, attention_mask=mask, **kwargs)
        self.counters["forward_passes"] += 1
        new = out[:, ids.shape[1]:].cpu()
        completions = []
        for i, r in enumerate(reqs):
            texts, reasons, n_tokens = [], [], 0
            for j in range(r.n):
                seq = new[i * r.n + j].tolist()
                text, reason, used = self._finish(seq, r)
                texts.append(text)
                reasons.append(reason)
                n_tokens += used
            completions.append(Completion(texts, len(rows[i]), n_tokens, reasons))
            self.counters["prompt_tokens"] += len(rows[i])
            self.counters["completion_tokens"] += n_tokens
        return completions

    def _stop_strings(self, stop: tuple[str, ...]):
        """The stopping criterion for these stop strings, built once per engine. `generate(stop_strings=...)`
        builds it from the whole vocabulary on every call (3 s for SmolLM2's 49k tokens on a 2-core CPU),
        and transformers' own cache of it never hits here: it is keyed on the order of `get_vocab()`,
        which a fast tokenizer returns in a different order each call. The criterion keeps no state
        between calls (it reads only the ids it is given)."""
        if stop not in self._stop_criteria:
            self._stop_criteria[stop] = StopStringCriteria(self.tokenizer, list(stop))
        return self._stop_criteria[stop]

    def _finish(self, seq: list[int], r: GenerationRequest) -> tuple[str, str, int]:
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        reason = "length"
        if eos in seq:
            seq = seq[:seq.index(eos)]
            reason = "stop"
        elif pad is not None and pad != eos:
            while seq and seq[-1] == pad:
                seq.pop()
        text = self.tokenizer.decode(seq, skip_special_tokens=True)
        for s in r.stop or ():
            if s in text:
                text = text[:text.index(s)]
                reason = "stop"
        return text.strip(), reason, len(seq)

    # ------------------------------------------------------------------ option scoring

    def prefill_batches(self, lengths: Sequence[int], past: int = 0, max_rows: int | None = None) -> list[list[int]]:
        """Indices of the prompts, longest first, cut into forward batches of at most `batch_size`
        rows and at most `prefill_tokens` padded tokens (rows × the batch's longest prompt); a
        prompt longer than the budget goes alone. Rows that continue `past` cached columns (prefix
        reuse) count those too, rows × (past + longest): each row holds its own copy of the prefix's
        keys and values, and a wider budget bought no speed here (finding 10 in BENCHMARKS.md).
        `max_rows`: fewer rows than `batch_size` (the prefix-reuse probe)."""
        budget = self.cfg.prefill_tokens or (1024 if self.device.type == "cpu" else None)
        order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        batches: list[list[int]] = []
        for i in order:
            last = batches[-1] if batches else None
            if (last is None or len(last) == (max_rows or self.cfg.batch_size)
                    or (budget is not None and (len(last) + 1) * (past + lengths[last[0]]) > budget)):
                batches.append([i])
            else:
                last.append(i)
        return batches

    @torch.inference_mode()
    def option_logprobs(self, requests: Sequence[OptionRequest], options: Sequence[str]) -> list[OptionLogprobs]:
        started = time.perf_counter()
        option_ids, encoded = self._scoring_inputs(requests, options)
        results: list[OptionLogprobs | None] = [None] * len(requests)

        def read(logp: torch.Tensor, row: int, i: int) -> None:
            results[i] = OptionLogprobs({o: torch.logsumexp(logp[row, option_ids[o]], dim=0).item() for o in options})

        roots = (prefix_tree(encoded, self.min_shared_prefix)
                 if len(encoded) > 1 and self.prefix_reuse else None)
        if roots is not None and is_shared(roots):
            self._prefill_tree(roots, None, read)
            self.counters["cached_prompt_tokens"] += sum(len(e) for e in encoded) - computed_tokens(roots)
        else:
            self._prefill_whole(encoded, read)
        self.counters["prompt_tokens"] += sum(len(e) for e in encoded)
        self.counters["requests"] += len(requests)
        self.counters["seconds"] += time.perf_counter() - started
        return results  # type: ignore[return-value]

    def _prefill_whole(self, encoded: Sequence[Sequence[int]], read) -> None:
        """Prefill every prompt whole, in the batches `prefill_batches` cuts; `read(logp, row, i)` gets
        each prompt's next-token log-probabilities. A forward that takes no position ids (neither by
        name nor through **kwargs) cannot be told where a left-padded row starts: its batches then
        hold prompts of one length only, so no row is padded and none needs them."""
        chunks = self.prefill_batches([len(e) for e in encoded])
        if not self._takes_positions:
            chunks = [[i for i in chunk if len(encoded[i]) == n]
                      for chunk in chunks for n in sorted({len(encoded[i]) for i in chunk}, reverse=True)]
        for chunk in chunks:
            ids, mask = self._pad_left([list(encoded[i]) for i in chunk])
            extra = {"position_ids": positions(mask)} if self._takes_positions else {}
            logits = self.net(input_ids=ids, attention_mask=mask, logits_to_keep=1, **extra).logits[:, -1, :]
            self.counters["forward_passes"] += 1
            logp = torch.log_softmax(logits.float(), dim=-1).cpu()
            for row, i in enumerate(chunk):
                read(logp, row, i)

    def _whole_logps(self, seqs: Sequence[Sequence[int]]) -> list[torch.Tensor]:
        """Each prompt's next-token log-probabilities over the vocabulary, every prompt run alone."""
        out = []
        for seq in seqs:
            self._prefill_whole([seq], lambda logp, row, i: out.append(logp[row]))
        return out

    def _prefill_tree(self, nodes: list[Node], parent: "_Prefilled | None", read, max_rows: int | None = None) -> None:
        """Prefill `nodes` (one level of the prefix tree, all children of rows of `parent`, or the top
        level when `parent` is None) in batches cut by `prefill_batches` over their own tokens; read the
        option scores of the prompts ending on them, then go down into their children, batch by batch."""
        batches = self.prefill_batches([len(n.tokens) for n in nodes], 0 if parent is None else parent.mask.shape[1],
                                       max_rows)
        for b, chunk in enumerate(batches):
            batch = [nodes[i] for i in chunk]
            ids, own_mask = self._pad_left([n.tokens for n in batch])
            if parent is None:
                cache, mask = DynamicCache(config=self.net.config), own_mask
            else:
                rows = torch.tensor([parent.row_of[id(n)] for n in batch], device=self.device)
                cache = parent.rows(rows, last_use=b == len(batches) - 1)
                mask = torch.cat([parent.mask.index_select(0, rows), own_mask], dim=1)
            out = self.net(input_ids=ids, attention_mask=mask, position_ids=positions(mask)[:, -ids.shape[1]:],
                           use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache})
            self.counters["forward_passes"] += 1
            ending = [(row, i) for row, n in enumerate(batch) for i in n.ends]
            if ending:
                logp = torch.log_softmax(out.logits[:, -1, :].float(), dim=-1).cpu()
                for row, i in ending:
                    read(logp, row, i)
            del out
            children = [c for n in batch for c in n.children]
            if children:
                row_of = {id(c): row for row, n in enumerate(batch) for c in n.children}
                self._prefill_tree(children, _Prefilled(cache, mask, row_of), read, max_rows)

    def stats(self) -> dict:
        return {"engine": self.name, "model": self.model, "device": str(self.device), **self.prefix_reuse_status(),
                **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.counters.items()}}

    def close(self) -> None:
        self.net = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _Prefilled:
    """A prefilled batch: its key/value cache, its attention mask (padding columns 0), and the row each
    child node continues."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, row_of: dict[int, int]):
        self.cache, self.mask, self.row_of = cache, mask, row_of

    def rows(self, rows: torch.Tensor, last_use: bool) -> DynamicCache:
        """A cache holding `rows` of this one (a row repeated once per child that continues it). The
        last batch of children takes this cache over; the others get a copy of their rows."""
        if last_use:
            self.cache.batch_select_indices(rows)
            return self.cache
        return DynamicCache((k.index_select(0, rows), v.index_select(0, rows)) for k, v, *_ in self.cache)


def _plain_dynamic_cache(config) -> bool:
    """Whether the model's default cache is full-attention `DynamicLayer`s only."""
    try:
        layers = DynamicCache(config=config).layers
    except Exception:  # a config transformers cannot read layer types from: no prefix reuse
        return False
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


# what `generate` would otherwise take from a model's generation_config and that changes the
# distribution sampled from (transformers' `_get_logits_processor`, the decoding mode, stop strings),
# set to "off"; `top_k=0` is set for every sampled request
PURE_SAMPLING = dict(
    repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_no_repeat_ngram_size=0,
    min_p=None, typical_p=1.0, epsilon_cutoff=0.0, eta_cutoff=0.0, top_h=None, bad_words_ids=None,
    sequence_bias=None, suppress_tokens=None, begin_suppress_tokens=None, forced_bos_token_id=None,
    forced_eos_token_id=None, min_length=0, min_new_tokens=None, exponential_decay_length_penalty=None,
    guidance_scale=None, watermarking_config=None, num_beams=1, penalty_alpha=None, dola_layers=None,
    stop_strings=None)


def pure_sampling_kwargs() -> dict:
    """`PURE_SAMPLING`, less the options this transformers version does not have."""
    from transformers import GenerationConfig

    known = GenerationConfig()
    return {k: v for k, v in PURE_SAMPLING.items() if hasattr(known, k)}


def _chunk_seed(reqs: Sequence[GenerationRequest], rows: Sequence[Sequence[int]]) -> int:
    """One seed for a batch, from its requests' seeds and prompts: same batch, same samples."""
    h = hashlib.sha256()
    for r, ids in zip(reqs, rows):
        h.update(f"{r.seed}|{len(ids)}|{ids[-8:]}".encode())
    return int.from_bytes(h.digest()[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF
