"""Engine settings grouped per engine (issue 35, part 3): a field an engine does not read cannot be set
on it without one error naming the engine and the field; today's pipeline files still load."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from rlaif.config import ENGINE_FIELDS, SHARED_ENGINE_FIELDS, EngineConfig, parse_model_spec
from rlaif.errors import UserError
from rlaif.pipeline_config import load_pipeline

ROOT = Path(__file__).resolve().parents[2]


def test_every_engine_field_belongs_to_an_engine_or_all():
    grouped = set(SHARED_ENGINE_FIELDS).union(*ENGINE_FIELDS.values())
    assert set(EngineConfig.model_fields) == grouped


@pytest.mark.parametrize("kind, field, value", [
    ("transformers", "base_url", "http://127.0.0.1:8000/v1"), ("transformers", "threads", 4),
    ("gguf", "tensor_parallel_size", 2), ("openai", "device", "cuda"), ("vllm", "timeout", 5.0),
    ("gguf", "tokenizer", "embedded:smollm2-135m-instruct"),
])
def test_a_field_of_another_engine_is_an_error_naming_the_engine(kind, field, value):
    with pytest.raises(ValidationError, match=f"{field} is not a setting of the {kind} engine"):
        EngineConfig(kind=kind, model="m", **{field: value})
    EngineConfig(kind=next(k for k, f in ENGINE_FIELDS.items() if field in f), model="m", **{field: value})


def test_defaults_and_shared_fields_are_fine_on_every_engine():
    for kind in ENGINE_FIELDS:
        EngineConfig(kind=kind, model="m", batch_size=3, system_prompt="be brief", timeout=60.0, device="auto")


def test_pipeline_block_errors_name_the_file_the_role_and_the_engine(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("name: t\njudge:\n  kind: transformers\n  base_url: http://127.0.0.1:9/v1\n")
    with pytest.raises(UserError) as e:
        load_pipeline(str(bad))
    assert str(e.value) == (f"{bad}: field judge: base_url is not a setting of the transformers engine (only of "
                            "the openai engine); drop it or set kind: openai")
    bad.write_text("name: t\npolicy:\n  model: embedded:smollm2-135m-instruct\n  threads: 2\n")  # no kind: transformers
    with pytest.raises(UserError, match="field policy: threads is not a setting of the transformers engine"):
        load_pipeline(str(bad))


@pytest.mark.parametrize("path", sorted((ROOT / "pipelines").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_pipelines_load(path):
    load_pipeline(str(path))


def test_a_spec_replacing_the_engine_drops_the_old_engines_settings():
    block = EngineConfig(kind="openai", model="m", base_url="http://127.0.0.1:9/v1", timeout=5.0, batch_size=3)
    gguf = parse_model_spec("gguf:/models/j.gguf", block)
    assert (gguf.kind, gguf.model, gguf.base_url, gguf.timeout, gguf.batch_size) == (
        "gguf", "/models/j.gguf", None, 60.0, 3)
    # the engine flags before the spec names the engine (load_engine("openai:m", base_url=...))
    served = parse_model_spec("openai:m", EngineConfig(base_url="http://127.0.0.1:9/v1", timeout=5.0))
    assert (served.kind, served.base_url, served.timeout) == ("openai", "http://127.0.0.1:9/v1", 5.0)
    with pytest.raises(UserError, match="model embedded:x: base_url is not a setting of the transformers engine"):
        parse_model_spec("embedded:x", EngineConfig(base_url="http://127.0.0.1:9/v1"))
