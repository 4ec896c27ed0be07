"""Prompt templates: YAML files under `prompts/` holding chat messages with `{placeholders}`.

    id: critique/v1
    messages:
      - role: system
        content: ...
      - role: user
        content: "... {prompt} ... {principle} ..."
    prefill: ""          # optional start of the assistant turn

`render(template, **values)` fills every message with `str.format`; a placeholder without a value
is an error naming the template and the placeholder.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from rlaif.config import Strict, load_config
from rlaif.errors import UserError
from rlaif.resources import resolve


class TemplateMessage(Strict):
    role: str = Field(pattern="^(system|user|assistant)$")
    content: str


class Template(Strict):
    id: str
    messages: list[TemplateMessage] = Field(min_length=1)
    prefill: str = ""

    def render(self, **values) -> list[dict]:
        try:
            return [{"role": m.role, "content": m.content.format(**values)} for m in self.messages]
        except KeyError as e:
            raise UserError(f"template {self.id}: no value for placeholder {e.args[0]!r}") from None

    def render_prefill(self, **values) -> str:
        try:
            return self.prefill.format(**values)
        except KeyError as e:
            raise UserError(f"template {self.id}: no value for placeholder {e.args[0]!r} in prefill") from None


_cache: dict[Path, Template] = {}


def load_template(name_or_path: str | Path) -> Template:
    path = resolve("prompts", name_or_path).resolve()
    if path not in _cache:
        _cache[path] = load_config(Template, path)
    return _cache[path]
