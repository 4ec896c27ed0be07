"""Pydantic models for engine, stage and pipeline configs, loaded from YAML with `--set` overrides.

Every validation problem becomes one `UserError` line naming the file, the field and what was
expected, so the CLI can print it and exit 2.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlaif.errors import UserError

EngineKind = Literal["transformers", "vllm", "openai", "gguf"]
ENGINE_KINDS = ("transformers", "vllm", "openai", "gguf")
# the model every role and trainer starts from unless told otherwise: SmolLM2-135M-Instruct, shipped in
# a wheel (rlaif/backends/embedded.py)
DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ExecutorConfig(Strict):
    """Where labeling and generation batches run: `executor:` in a pipeline, or `--executor ray
    --ray-address A --ray-actors N` (rlaif/executors)."""

    kind: Literal["local", "ray"] = "local"
    address: str | None = None  # a Ray cluster (HOST:6379, ray://HOST:10001, auto); None: start a local one
    actors: int = Field(2, ge=1)  # actors, each holding one engine
    cpus_per_actor: float = Field(1.0, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)  # 1 for a vLLM engine per GPU
    # at most this many records per Ray Data block (one task; whole runner batches, at least 4 blocks per actor):
    # Ray Data keeps ~40 KB per block on the driver, so blocks of one small batch made its memory grow with the records
    block_records: int = Field(256, ge=1)
    # a fleet of OpenAI-compatible servers: actor k sends its openai engines' requests to base_urls[k mod n]
    base_urls: list[str] | None = None

    @field_validator("base_urls")
    @classmethod
    def _urls(cls, v):
        if v is not None:
            if not v:
                raise ValueError("expected at least one URL")
            bad = [u for u in v if not u.startswith(("http://", "https://"))]
            if bad:
                raise ValueError(f"expected http:// or https:// URLs, got {bad[0]!r}")
        return v


class EngineConfig(Strict):
    """Which engine serves a model, and how. `model` is a spec: `embedded:NAME`, a local HF model
    dir, a hub id, or (openai) the server's model name."""

    kind: EngineKind = "transformers"
    model: str = DEFAULT_MODEL  # gguf: the path of a .gguf file
    # transformers / vllm
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:1"
    dtype: str = "auto"  # "auto" | "float32" | "bfloat16" | "float16"
    batch_size: int = Field(16, ge=1)
    # transformers engine, option scoring: at most this many (padded) prompt tokens per forward; None = 1024 on CPU
    # (prefill there slows down once a batch's activations outgrow the caches), no cap on a GPU
    prefill_tokens: int | None = Field(None, ge=1)
    max_model_len: int | None = None  # vllm: max_model_len; gguf: n_ctx (default: the model's own)
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    # vllm
    tensor_parallel_size: int = Field(1, ge=1)
    max_num_seqs: int | None = Field(None, ge=1)
    quantization: str | None = None  # e.g. "awq", "gptq", "fp8"; None: what the checkpoint says
    # gguf (llama.cpp): CPU threads (None: llama.cpp's default)
    threads: int | None = Field(None, ge=1)
    # openai
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)
    timeout: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0)
    top_logprobs: int = Field(20, ge=1, le=20)  # OpenAI's API and vLLM's server cap it at 20
    # how option scoring's prefill reaches the assistant turn (rlaif/backends/openai_engine.py): "auto" picks
    # "completions" when `tokenizer` is set, "continue_final_message" on a vLLM server, else "user_turn" (warned)
    prefill_mode: Literal["auto", "completions", "continue_final_message", "user_turn"] = "auto"
    tokenizer: str | None = None  # the served model's tokenizer (embedded:NAME, a dir, a hub id), for "completions"
    # a system prompt added to every chat, if set
    system_prompt: str | None = None

    @field_validator("kind", mode="before")
    @classmethod
    def _llamacpp_is_gguf(cls, v):
        return "gguf" if v == "llamacpp" else v

    @model_validator(mode="after")
    def _fields_apply_to_kind(self):
        # a block that names its kind sets only that engine's fields (a template without a kind,
        # e.g. the CLI's engine flags before the model spec picks the engine, is checked by parse_model_spec)
        if "kind" in self.model_fields_set:
            problem = engine_field_problem(self)
            if problem:
                raise ValueError(problem)
        return self


# The fields each engine reads (beyond kind, model, batch_size and system_prompt, which every engine has).
# A field set to anything but its default on an engine that does not read it is an error naming both.
ENGINE_FIELDS = {
    "transformers": ("device", "dtype", "prefill_tokens"),
    "vllm": ("device", "dtype", "max_model_len", "gpu_memory_utilization", "tensor_parallel_size", "max_num_seqs",
             "quantization", "top_logprobs"),
    "openai": ("base_url", "api_key_env", "concurrency", "timeout", "max_retries", "top_logprobs", "prefill_mode",
               "tokenizer"),
    "gguf": ("max_model_len", "threads"),
}
SHARED_ENGINE_FIELDS = ("kind", "model", "batch_size", "system_prompt")


def engines_reading(field: str) -> tuple[str, ...]:
    return tuple(k for k, fields in ENGINE_FIELDS.items() if field in fields)


def engine_field_problem(cfg: EngineConfig) -> str | None:
    """One line when `cfg` sets a field its engine does not read, else None."""
    for name, info in EngineConfig.model_fields.items():
        if name in SHARED_ENGINE_FIELDS or name in ENGINE_FIELDS[cfg.kind]:
            continue
        if getattr(cfg, name) != info.default:
            owners = engines_reading(name)
            return (f"{name} is not a setting of the {cfg.kind} engine (only of the {' and '.join(owners)} "
                    f"engine{'s' if len(owners) > 1 else ''}); drop it or set kind: {' or '.join(owners)}")
    return None


def not_applying(kind: str) -> list[str]:
    """The engine fields `kind` does not read."""
    return [n for n in EngineConfig.model_fields if n not in SHARED_ENGINE_FIELDS and n not in ENGINE_FIELDS[kind]]


def parse_model_spec(spec: str, base: EngineConfig | None = None) -> EngineConfig:
    """`[engine:]model` -> EngineConfig. `embedded:X` and bare paths/ids use transformers;
    `vllm:X`, `openai:X` and `gguf:PATH` (or `llamacpp:PATH`) pick those engines; `transformers:X`
    is explicit."""
    base = base or EngineConfig()
    head, sep, rest = spec.partition(":")
    if sep and head == "llamacpp":
        head = "gguf"
    if sep and head in ENGINE_KINDS:
        kind, model = head, rest
    else:
        kind, model = ("transformers" if head == "embedded" or not sep else base.kind), spec
    fields = base.model_dump(exclude_unset=True)
    if "kind" in base.model_fields_set and kind != base.kind:
        # another engine replaces a block's (e.g. --judge gguf:PATH over an openai judge block): the
        # settings of the old engine that the new one does not read are dropped
        fields = {k: v for k, v in fields.items() if k not in not_applying(kind)}
    try:
        return EngineConfig.model_validate({**fields, "kind": kind, "model": model})
    except ValidationError as e:
        raise UserError(f"model {spec}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def config_hash(obj: Any) -> str:
    """Stable short hash of a config (pydantic model or JSON-able value)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- YAML loading and overrides


def read_yaml(path: str | Path) -> Any:
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); expected a UTF-8 YAML file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        raise UserError(f"{path}: file is empty; expected a YAML mapping")
    return data


def _coerce(value: str) -> Any:
    """`--set` values are YAML scalars: 3 -> int, 0.5 -> float, true -> bool, [a,b] -> list."""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply `key.path=value` overrides to a nested dict (in place; also returned)."""
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key.path=value")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
                continue
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {part!r} is not inside a mapping")
            node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"--set {item!r}: {parts[-1]!r} is not inside a mapping")
        node[parts[-1]] = _coerce(value)
    return data


def describe_validation_error(source: str, err: ValidationError) -> str:
    """One line: `FILE: field a.b: expected ..., got ...` (first error; count of the rest)."""
    errors = err.errors()
    first = errors[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        what = "unknown key"
    elif kind == "missing":
        what = "missing required field"
    elif kind == "value_error" and isinstance(first.get("input"), (dict, list)):  # a model's own check
        what = first["msg"].removeprefix("Value error, ")
    else:
        got = first.get("input")
        shown = repr(got) if not isinstance(got, (dict, list)) else type(got).__name__
        if len(shown) > 60:
            shown = shown[:57] + "..."
        what = f"{first['msg'][0].lower()}{first['msg'][1:]} (got {shown})"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{source}: field {field}: {what}{more}"


def validate(model: type[BaseModel], data: Any, source: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UserError(describe_validation_error(source, e)) from None


def load_config(model: type[BaseModel], path: str | Path, overrides: list[str] | None = None):
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a YAML mapping at the top level, got {type(data).__name__}")
    return validate(model, apply_overrides(data, overrides), str(path))
