"""The distribution name: "rlaif" on PyPI is an unrelated project, so ours is rlaif-kit, and no
install line anywhere in the project points at the other one."""

import re
import tomllib

from testkit import ROOT


def test_distribution_is_not_the_unrelated_rlaif_on_pypi():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["name"] == "rlaif-kit"
    assert project["scripts"]["rlaif"] == "rlaif.cli:main"  # the command and import package stay rlaif


def test_no_install_line_names_the_other_project():
    wrong = re.compile(r"pip install[^\n]*['\" ]rlaif(\[|['\" ]|$)")
    files = [ROOT / "README.md", ROOT / "Makefile", *ROOT.glob("rlaif/**/*.py"), *ROOT.glob("benchmarks/*.py")]
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
                 if wrong.search(line)]
    assert not offenders, offenders


def test_requires_python_is_the_python_the_lock_and_make_test():
    """pyproject's requires-python names the oldest Python the lock was made on and CI runs (issue 31);
    make checks the same floor before it creates a venv."""
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    m = re.fullmatch(r">=(\d+)\.(\d+)", floor)
    assert m, floor
    lock_head = (ROOT / "constraints.txt").read_text().splitlines()[0]
    assert f"Python {m[1]}.{m[2]}" in lock_head, lock_head
    assert f"sys.version_info[:2] < ({m[1]}, {m[2]})" in (ROOT / "Makefile").read_text()
    assert f"Python {m[1]}.{m[2]} or newer" in (ROOT / "README.md").read_text()


def test_every_subpackage_ships_in_the_wheel():
    """setuptools' `packages` list names every folder of rlaif/ that is a package: a subpackage left
    out works from a checkout (editable install) and is missing from the built wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "rlaif").rglob("__init__.py")}
    assert found - listed == set(), f"subpackages missing from pyproject's packages: {sorted(found - listed)}"
