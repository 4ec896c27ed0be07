"""Find shipped constitutions, prompt templates and prompt sets by short name or path.

In a source checkout they live at the top level (`constitutions/`, `prompts/`); in an installed
wheel they are packaged as `rlaif/_data/<kind>/`. A name like `harmless` resolves to
`constitutions/harmless.yaml`; anything that exists as a path is used as it is.
"""

from __future__ import annotations

from pathlib import Path

from rlaif.errors import UserError

_PKG = Path(__file__).resolve().parent
_SUFFIXES = {"constitutions": (".yaml", ".yml"), "prompts": (".yaml", ".yml", ".jsonl", ".txt")}


def resource_dir(kind: str) -> Path:
    for candidate in (_PKG.parent / kind, _PKG / "_data" / kind):
        if candidate.is_dir():
            return candidate
    raise UserError(f"the {kind}/ folder that ships with rlaif is missing (looked beside {_PKG})")


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """A path that exists, or a shipped file named `name` (with or without suffix) under `kind/`."""
    path = Path(name_or_path)
    if path.exists():
        return path
    base = resource_dir(kind)
    for suffix in ("",) + _SUFFIXES.get(kind, ()):
        candidate = base / f"{name_or_path}{suffix}"
        if candidate.is_file():
            return candidate
    shipped = sorted(p.stem for p in base.iterdir() if p.suffix in _SUFFIXES.get(kind, ()))
    raise UserError(f"{name_or_path}: no such file, and no shipped {kind[:-1]} by that name "
                    f"(shipped: {', '.join(shipped) or 'none'})")
