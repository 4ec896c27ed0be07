"""Engines behind one protocol (see base.py). `load_engine(cfg)` picks one by `cfg.kind`."""

from __future__ import annotations

from rlaif.backends.base import (
    Completion, Engine, GenerationRequest, OptionLogprobs, OptionRequest, option_spellings,
)
from rlaif.config import EngineConfig, parse_model_spec

ENGINES = {
    "transformers": "local Hugging Face model on CPU or CUDA (embedded:NAME, a model folder, a hub id)",
    "vllm": "vllm.LLM in-process with prefix caching (GPU; pip install 'rlaif-kit[vllm]')",
    "openai": "any OpenAI-compatible server (OpenAI, vLLM, llama.cpp, Ollama); key from the environment",
    "gguf": "a GGUF file in process through llama-cpp-python (gguf:PATH; CPU judges, quantised 1-8B)",
}


def load_engine(cfg: EngineConfig | str, **settings) -> Engine:
    """An engine from an engine block, or from a model spec (`embedded:NAME`, `gguf:PATH`,
    `openai:NAME`, `vllm:ID`, a model folder or hub id) with engine `settings` (EngineConfig fields,
    e.g. base_url=..., device=...)."""
    if isinstance(cfg, str):
        cfg = parse_model_spec(cfg, EngineConfig(**settings))
    elif settings:
        cfg = cfg.model_copy(update=settings)
    if cfg.kind == "transformers":
        from rlaif.backends.transformers_engine import TransformersEngine

        return TransformersEngine(cfg)
    if cfg.kind == "vllm":
        from rlaif.backends.vllm_engine import VLLMEngine

        return VLLMEngine(cfg)
    if cfg.kind == "openai":
        from rlaif.backends.openai_engine import OpenAIEngine

        return OpenAIEngine(cfg)
    if cfg.kind == "gguf":
        from rlaif.backends.gguf_engine import GGUFEngine

        return GGUFEngine(cfg)
    raise ValueError(cfg.kind)


__all__ = ["load_engine", "ENGINES", "Engine", "EngineConfig", "GenerationRequest", "Completion",
           "OptionRequest", "OptionLogprobs", "option_spellings"]
