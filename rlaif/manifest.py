"""An output folder's `manifest.json`: one entry per stage that wrote there, with the package
versions and the command line that ran it. Stages, trainers and reports all record into it; the
runner writes a stage's entry when the stage ends."""

from __future__ import annotations

import json
import platform
import re
import sys
from importlib import metadata
from pathlib import Path

from rlaif.version import __version__
from rlaif.records import write_atomic

MANIFEST = "manifest.json"
_VERSIONED = ("torch", "transformers", "accelerate", "datasets", "openai", "vllm", "trl", "peft")


def package_versions() -> dict[str, str]:
    versions = {"rlaif": __version__, "python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return versions


def read_manifest(out_dir: Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return {}


_URL_USERINFO = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]*@")


def _scrub(obj):
    """Credentials inside URLs (`http://user:key@host`) never reach the manifest."""
    if isinstance(obj, str):
        return _URL_USERINFO.sub(r"\1***@", obj)
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_scrub(v) for v in obj]
    return obj


def update_manifest(out_dir: Path, stage: str, entry: dict) -> None:
    """Merge one stage's entry into `manifest.json`, written atomically."""
    manifest = read_manifest(out_dir)
    manifest.update({"rlaif_version": __version__, "versions": package_versions(),
                     "command": _scrub(" ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]))})
    manifest.setdefault("stages", {})[stage] = _scrub(entry)
    write_atomic(Path(out_dir) / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")


__all__ = ["MANIFEST", "package_versions", "read_manifest", "update_manifest"]
