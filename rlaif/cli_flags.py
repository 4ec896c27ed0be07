"""Command-line flags made from pydantic models (issue 35): a field of a command's config is a flag, its
description the flag's help, so a field added to a trainer's config is a flag of its command with
nothing written here or in cli_train.py.

The flags come from pydantic-settings' CLI support (`CliSettingsSource` on the command's own argparse
parser, kebab-case names, `--FIELD.SUB` for a nested model, `--FLAG/--no-FLAG` for booleans, JSON for
lists and mappings); it also turns the parsed flags back into the config's (nested) fields. What is
ours: older spellings of a flag (`--out` for output_dir, `--lr` for learning_rate, `--hard-labels` for
`--no-soft-labels`, ...), the flags a command needs, fields a command fills itself, and making the flags
only when their command is parsed, so `rlaif --help` and the other commands never import a trainer
(torch) to build their parser. Values stay strings until the config validates them, so a bad value is
the config's own one-line error naming the field (exit 2), as a bad YAML value is.

A command's config is layered as before: a YAML `--config` first, then the flags given, then `--set
key.path=value`."""

from __future__ import annotations

import argparse
import importlib
import re
from typing import Any

from rlaif.errors import UserError

# older spellings every trainer command keeps (field path -> extra flag names)
TRAIN_SPELLINGS = {"output_dir": ("--out",), "max_steps": ("--steps",), "learning_rate": ("--lr",)}


def load_model(ref):
    """`module:Class` (imported now), the class itself, or a function that returns it."""
    from pydantic import BaseModel

    if isinstance(ref, str):
        module, _, name = ref.partition(":")
        return getattr(importlib.import_module(module), name)
    return ref if isinstance(ref, type) and issubclass(ref, BaseModel) else ref()


class ModelFlags:
    """The fields of one pydantic model as flags of one command.

    `spellings`: field path -> extra flag names (`{"lora.r": ("--lora-r",)}`); for a boolean they name
    the flag the field's default does not give (`soft_labels` (default true) -> `--hard-labels` sets it
    false). `required`: fields the command line must give. `exclude`: fields the command fills itself
    (no flag). `title`: the help section."""

    def __init__(self, model, *, spellings: dict | None = None, required=(), exclude=(), title: str | None = None):
        self.ref, self.spellings = model, dict(spellings or {})
        self.required, self.exclude, self.title = set(required), set(exclude), title
        self.source, self._model = None, None

    @property
    def model(self):
        if self._model is None:
            self._model = load_model(self.ref)
        return self._model

    def fields(self) -> list[str]:
        """Field names that are flags."""
        return [n for n in self.model.model_fields if n not in self.exclude]

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        from pydantic_settings import CliSettingsSource

        model = self.model
        title = self.title or f"{model.__name__} fields"
        group = parser.add_argument_group(title)

        def add_argument(_parser, *names, **kwargs):
            dest = kwargs.get("dest", "")
            if dest.split(".")[0] in self.exclude:
                return None
            # a one-letter field is `-n` to pydantic-settings; our flags are all long (`--n`)
            names = tuple(f"-{n}" if re.fullmatch(r"-[A-Za-z]", n) else n for n in names)
            names = (*names, *(n for n in self.spellings.get(dest, ()) if n not in names))
            if dest in self.required:
                kwargs["required"] = True
                kwargs["help"] = re.sub(r"\(default: [^)]*\)$", "(required)", kwargs.get("help") or "")
            return group.add_argument(*names, **kwargs)

        self.source = CliSettingsSource(
            model, root_parser=parser, cli_kebab_case=True, cli_implicit_flags="toggle",
            cli_hide_none_type=True, add_argument_method=add_argument, cli_prog_name=parser.prog)

    def values(self, args: argparse.Namespace) -> dict[str, Any]:
        """The fields the command line gave (nested dicts for nested models), not yet validated."""
        from pydantic_settings import SettingsError

        if self.source is None:
            return {}
        try:
            got = self.source(parsed_args=args)()
        except (SettingsError, ValueError) as e:
            raise UserError(f"command line: {str(e).splitlines()[0]}") from None
        return {k: v for k, v in got.items() if k not in self.exclude}


def add_command(sub, name: str, *, func, flags: list[ModelFlags], layered: bool = True, **parser_kwargs):
    """A subcommand whose flags come from `flags`, made the first time the command is parsed (or its
    help shown). `layered`: also `--config YAML` and `--set KEY=VALUE` for the first model (the
    command's config). The command reads its fields with `args.flags`."""
    p = sub.add_parser(name, **parser_kwargs)
    made = []
    plain = p.parse_known_args

    def make_flags():
        if not made:
            made.append(True)
            if layered:
                g = p.add_argument_group("config layering")
                g.add_argument("--config", help="YAML with the command's config; flags given here override it")
                g.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                               help="override any config field (KEY.SUB=VALUE for a nested one), after the flags")
            for f in flags:
                f.add_to(p)
        return p

    def parse_known_args(args=None, namespace=None):
        make_flags()
        return plain(args, namespace)

    p.parse_known_args = parse_known_args  # argparse hands a subcommand's arguments to this
    p.make_flags = make_flags  # the flags now (for a listing of them, or help without parsing)
    p.set_defaults(func=func, flags=flags)
    return p


def build(config, args: argparse.Namespace, flags: ModelFlags, fixed: dict | None = None):
    """The config from `--config` YAML, then the flags given, then `fixed` (what the command sets from
    its other flags), then `--set`; one UserError line naming the field on a bad value."""
    from rlaif.config import apply_overrides, read_yaml, validate

    data: dict = {}
    path = getattr(args, "config", None)
    if path:
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise UserError(f"{path}: expected a YAML mapping at the top level")
    for key, value in {**flags.values(args), **(fixed or {})}.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            value = {**data[key], **value}  # --lora.r 8 keeps the YAML's other lora fields
        data[key] = value
    return validate(config, apply_overrides(data, getattr(args, "set", None)), path or "command line")


__all__ = ["ModelFlags", "TRAIN_SPELLINGS", "add_command", "build", "load_model"]
