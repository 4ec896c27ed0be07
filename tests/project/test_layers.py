"""Imports only go down: every import in rlaif/ (inside functions too) is checked against the layer
table in rlaif/layers.py, read with `ast`: nothing is imported and no model loads. Imports under
`if TYPE_CHECKING:` never run: they are left out of the layer order, but they count for circles (a
circle held open by `TYPE_CHECKING` is still two modules that need each other) and for the trainers,
which never import one another (TRAINERS and RECIPES in rlaif/layers.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "rlaif"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def read_table(name: str):
    """A constant of rlaif/layers.py, read without importing the package."""
    tree = ast.parse((PACKAGE / "layers.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"rlaif/layers.py has no {name} table")


def read_layers() -> list[tuple[str, tuple[str, ...]]]:
    return list(read_table("LAYERS"))


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
LAYERS = read_layers()


def layer_of(module: str) -> int | None:
    """Index of the layer holding `module`: an entry that is the module itself, or a subpackage
    (a folder) that contains it."""
    for i, (_, entries) in enumerate(LAYERS):
        for entry in entries:
            is_package = (PACKAGE.parent / entry.replace(".", "/")).is_dir() and entry != "rlaif"
            if module == entry or (is_package and module.startswith(entry + ".")):
                return i
    return None


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST, type_checking: bool = False):
    """Every node, leaving out the bodies of `if TYPE_CHECKING:` unless `type_checking`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child) and not type_checking:
                stack.extend(child.orelse)
            else:
                stack.append(child)


def _target(importer: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = importer.split(".") if path.name == "__init__.py" else importer.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def package_imports(type_checking: bool = False) -> tuple[dict[str, dict[str, int]], list[str]]:
    """{importer: {imported module: first line}} within rlaif (with the imports under `if
    TYPE_CHECKING:` when `type_checking`), and every use of another module's private name, as a
    message."""
    edges: dict[str, dict[str, int]] = {}
    private: list[str] = []
    for importer, path in MODULES.items():
        tree = ast.parse(path.read_text(), str(path))
        out = edges.setdefault(importer, {})
        bound: dict[str, str] = {}  # local name -> rlaif module it stands for
        for node in _nodes(tree, type_checking):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "rlaif":
                        out.setdefault(alias.name, node.lineno)
                        bound[alias.asname or alias.name] = alias.name
            elif isinstance(node, ast.ImportFrom):
                target = _target(importer, path, node)
                if target.split(".")[0] != "rlaif":
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    if sub in MODULES:  # `from rlaif import runner`
                        out.setdefault(sub, node.lineno)
                        bound[alias.asname or alias.name] = sub
                        continue
                    out.setdefault(target, node.lineno)
                    if alias.name.startswith("_") and not alias.name.startswith("__") and target != importer:
                        private.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {importer} imports "
                                       f"the private name {alias.name} of {target}")
        for node in _nodes(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in bound
                    and bound[node.value.id] != importer):
                private.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {importer} uses the private "
                               f"name {node.attr} of {bound[node.value.id]}")
        out.pop(importer, None)
    return edges, private


EDGES, PRIVATE = package_imports()
ALL_EDGES, _ = package_imports(type_checking=True)  # what each module needs, to run or to be read
TRAINERS: dict[str, tuple[str, ...]] = read_table("TRAINERS")
RECIPES: tuple[str, ...] = read_table("RECIPES")


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if layer_of(m) is None]
    assert not missing, f"not in any layer of rlaif/layers.py: {', '.join(missing)}; add them to LAYERS"


def test_imports_only_go_down():
    upward = []
    for importer, targets in EDGES.items():
        mine = layer_of(importer)
        for target, line in targets.items():
            theirs = layer_of(target if target in MODULES else target.rsplit(".", 1)[0])
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{MODULES[importer].relative_to(PACKAGE.parent)}:{line}: {importer} "
                              f"({LAYERS[mine][0]}) imports {target} ({LAYERS[theirs][0]}), a higher layer")
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_circles():
    """Each circle found once, as the chain of modules that closes it; imports under `if
    TYPE_CHECKING:` count (they only hide a circle from the interpreter)."""
    circles, state = [], {}

    def visit(module, chain):
        state[module] = "open"
        for target in sorted(ALL_EDGES.get(module, {})):
            if target not in MODULES:
                continue
            if state.get(target) == "open":
                circles.append(" -> ".join(chain[chain.index(target):] + [target]))
            elif target not in state:
                visit(target, chain + [target])
        state[module] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_no_module_imports_another_modules_private_names():
    assert not PRIVATE, "private names used across modules:\n" + "\n".join(PRIVATE)


def _short(entry: str) -> str:
    name = entry.removeprefix("rlaif.")
    return name.replace(".", "/") + "/" if (PACKAGE.parent / entry.replace(".", "/")).is_dir() else name


def _documented(entries) -> set[str]:
    return {_short(e) for e in entries if e != "rlaif"}


def test_the_readme_layout_shows_the_same_layers_in_order():
    readme = (PACKAGE.parent / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    rows = [line for line in layout.splitlines() if line.startswith("| ") and not line.startswith("| layer")]
    shown = [(row.split("|")[1].strip(), set(re.findall(r"`([^`]+)`", row.split("|")[2]))) for row in rows]
    assert shown == [(name, _documented(entries)) for name, entries in LAYERS], \
        "README's Layout table differs from LAYERS in rlaif/layers.py"


def test_the_package_docstring_shows_the_same_layers_in_order():
    doc = ast.get_docstring(ast.parse((PACKAGE / "__init__.py").read_text()))
    shown = []
    for line in doc.splitlines():
        m = re.match(r"    (\S+(?: \S+)?)\s{2,}(.+)", line)
        if m:
            modules = re.sub(r"\(.*?\)", "", m.group(2))
            shown.append((m.group(1), {x.strip() for x in modules.split(",") if x.strip()}))
    assert shown == [(name, _documented(entries)) for name, entries in LAYERS], \
        "rlaif/__init__.py's layer list differs from LAYERS in rlaif/layers.py"


@pytest.mark.parametrize("name,entries", LAYERS)
def test_every_layer_entry_exists(name, entries):
    for entry in entries:
        assert entry in MODULES, f"layer {name}: {entry} is not a module of rlaif/"


def test_nothing_outside_the_judge_imports_its_internals():
    """The judge is one unit: other modules import `rlaif.judge` (the package), never its files."""
    inside = [f"{MODULES[i].relative_to(PACKAGE.parent)}:{line}: {i} imports {t}"
              for i, targets in EDGES.items() if not i.startswith("rlaif.judge")
              for t, line in targets.items() if t.startswith("rlaif.judge.")]
    assert not inside, "judge internals imported from outside rlaif/judge/:\n" + "\n".join(inside)


def test_the_judge_layer_sits_between_engines_and_execution():
    names = [name for name, _ in LAYERS]
    assert names.index("engines") < names.index("judging") < names.index("execution")
    assert ("rlaif.judge",) in [entries for _, entries in LAYERS]


def test_type_checking_imports_count_for_circles():
    """The circle check sees an import that only `if TYPE_CHECKING:` holds."""
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from rlaif.x import Y\n")
    imported = [n.module for n in _nodes(tree, type_checking=True) if isinstance(n, ast.ImportFrom)]
    assert "rlaif.x" in imported
    assert "rlaif.x" not in [n.module for n in _nodes(tree) if isinstance(n, ast.ImportFrom)]


def test_the_trainer_table_names_modules_of_rlaif_train():
    named = [m for modules in TRAINERS.values() for m in modules] + list(RECIPES)
    assert len(named) == len(set(named)), "a module is named twice in TRAINERS / RECIPES"
    for module in named:
        assert module in MODULES and module.startswith("rlaif.train."), f"{module} is not a module of rlaif/train/"


def test_no_trainer_imports_another_trainer():
    """A trainer's helpers live in the shared modules of rlaif/train/ (models, examples, maths,
    rollouts, pair_logps, trainer…), never in another trainer; only a recipe may run trainers."""
    owner = {m: name for name, modules in TRAINERS.items() for m in modules}
    borrowed = [f"{MODULES[i].relative_to(PACKAGE.parent)}:{line}: {i} (trainer {owner[i]}) imports {t} "
                f"(trainer {owner[t]})"
                for i, targets in ALL_EDGES.items() if i in owner and i not in RECIPES
                for t, line in targets.items() if t in owner and owner[t] != owner[i]]
    assert not borrowed, "trainers importing other trainers:\n" + "\n".join(borrowed)

