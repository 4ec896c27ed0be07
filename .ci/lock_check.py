"""Compare a virtual environment's installed packages with the lock (constraints.txt), or write the lock.

`python .ci/lock_check.py constraints.txt` prints every package whose installed version differs from
the lock, and every installed package the lock does not name; exit 1 if there is any (--report: print
them and exit 0, for `make test-latest`, where drift is the point). Run it with the venv's own python.

Two things are accepted without a pin, since they depend on the platform and not on us:
- torch's own dependencies on this platform: on Linux x86-64, torch from PyPI is the CUDA build and
  brings nvidia-*, cuda-* and triton wheels (the CPU build brings none). They are the installed
  distributions torch requires through a requirement whose marker names the platform
  (`platform_system == "Linux"`), directly or through another such distribution; they are listed as
  accepted. torch's other requirements (filelock, sympy, setuptools, ...) stay pinned and checked.
- the torch build: the lock pins torch's release (`torch==2.13.0`, which pip matches against both
  2.13.0 and 2.13.0+cpu) and records, in a `# torch build: ...` line, the build the suite was green
  on. A different build (CUDA where the lock says CPU) is printed, not an error.

`python .ci/lock_check.py constraints.txt --write` (what `make lock` runs, after the suite passed on
this venv) prints a new lock: the old lock's opening comments, the torch build line, then one pin
for every installed distribution except this project and torch's platform dependencies.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

try:
    from packaging.requirements import InvalidRequirement, Requirement
except ImportError:  # a venv with pip only: pip carries its own copy
    from pip._vendor.packaging.requirements import InvalidRequirement, Requirement

OURS = {"rlaif-kit"}
BUILD_LINE = "# torch build: "
USAGE = "usage: python .ci/lock_check.py LOCK [--report | --write]"


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> tuple[dict[str, str], str | None, list[str]]:
    """-> (pins by normalised name, the recorded torch build or None, the opening comment lines)."""
    pins, build, head = {}, None, []
    text = Path(path).read_text(encoding="utf-8")
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.startswith(BUILD_LINE):
            build = raw[len(BUILD_LINE):].split()[0]
            continue
        if raw.startswith("#") and not pins:
            head.append(raw)
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip():
            raise ValueError(f"{path}:{n}: expected NAME==VERSION, got {line!r}")
        pins[norm(name.strip())] = version.strip()
    return pins, build, head


def installed() -> dict[str, metadata.Distribution]:
    found = {}
    for d in metadata.distributions():
        name = d.metadata["Name"]
        if name:
            found.setdefault(norm(name), d)  # the first on sys.path wins, as for an import
    return found


def release(version: str) -> str:
    return version.split("+", 1)[0]


PLATFORM_MARKER = re.compile(r"\b(platform_system|sys_platform|platform_machine|os_name|platform_release)\b")


def _closure(dists: dict[str, metadata.Distribution], platform: bool) -> set[str]:
    """torch's installed requirements, transitively, with their markers evaluated for this interpreter
    and platform and the extras asked for followed; with platform=False, requirements whose marker
    names the platform (platform_system, sys_platform, platform_machine, ...) are left out."""
    seen: set[tuple[str, frozenset]] = set()
    todo = [("torch", frozenset())]
    while todo:
        name, extras = todo.pop()
        dist = dists.get(name)
        if dist is None:
            continue
        for spec in dist.requires or []:
            try:
                req = Requirement(spec)
            except InvalidRequirement:
                continue
            if req.marker is not None:
                if not platform and PLATFORM_MARKER.search(str(req.marker)):
                    continue
                if not any(req.marker.evaluate({"extra": e}) for e in (extras or {""})):
                    continue
            key = (norm(req.name), frozenset(req.extras))
            if key[0] in dists and key[0] != "torch" and key not in seen:
                seen.add(key)
                todo.append(key)
    return {name for name, _ in seen}


def torch_platform_dependencies(dists: dict[str, metadata.Distribution]) -> set[str]:
    """The installed distributions torch needs only on this platform: reached through a requirement
    whose marker names the platform (the CUDA build's nvidia-*, cuda-*, triton), and not otherwise."""
    return _closure(dists, platform=True) - _closure(dists, platform=False)


def torch_build(dists: dict[str, metadata.Distribution]) -> tuple[str, str] | None:
    """-> (version as installed, "CPU" or "CUDA x.y" or "ROCm x.y"), read from the distribution's
    files without importing torch; None when torch is not installed."""
    dist = dists.get("torch")
    if dist is None:
        return None
    version = dist.version
    local = version.partition("+")[2]
    cuda = hip = None
    try:
        text = Path(dist.locate_file("torch/version.py")).read_text(encoding="utf-8")
        m = re.search(r"^cuda\b.*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        cuda = m and m.group(1)
        m = re.search(r"^hip\b.*=\s*['\"]([^'\"]+)['\"]", text, re.M)
        hip = m and m.group(1)
    except OSError:
        pass
    if cuda or local.startswith("cu"):
        return version, f"CUDA {cuda}" if cuda else f"CUDA ({local})"
    if hip or local.startswith("rocm"):
        return version, f"ROCm {hip}" if hip else f"ROCm ({local})"
    return version, "CPU"


def describe_build(version: str) -> str:
    local = version.partition("+")[2]
    if local == "cpu":
        return "CPU"
    if local.startswith("cu"):
        return "CUDA"
    if local.startswith("rocm"):
        return "ROCm"
    return "as published on PyPI for that platform: CUDA on Linux x86-64, CPU elsewhere"


def check(lock_path: str, report: bool) -> int:
    lock, build, _ = read_lock(lock_path)
    dists = installed()
    versions = {n: d.version for n, d in dists.items()}
    platform_deps = torch_platform_dependencies(dists)
    changed = {n: (lock[n], v) for n, v in versions.items() if n in lock and lock[n] != release(v)}
    accepted = {n: versions[n] for n in platform_deps if n not in lock}
    extra = {n: v for n, v in versions.items() if n not in lock and n not in OURS and n not in accepted}
    for n, (want, got) in sorted(changed.items()):
        print(f"lock: {n} {want} -> installed {got}")
    for n, v in sorted(extra.items()):
        print(f"lock: {n} {v} is installed but not in the lock")
    if accepted:
        names = ", ".join(f"{n} {v}" for n, v in sorted(accepted.items()))
        print(f"lock: accepted without a pin, torch's own dependencies on this platform ({len(accepted)}): {names}")
    here = torch_build(dists)
    if here and build:
        if here[0] == build:
            print(f"lock: torch {here[0]} ({here[1]} build) is the build the suite was green on")
        else:
            print(f"lock: torch {here[0]} is the {here[1]} build; the lock's suite was green on torch {build} "
                  f"({describe_build(build)}); make test tells whether this one passes too")
    if not changed and not extra:
        print(f"lock: the environment matches the lock ({len(lock)} packages pinned, "
              f"{sum(n in lock for n in versions)} of them installed here)")
    return 0 if report or not (changed or extra) else 1


def write(lock_path: str) -> int:
    _, _, head = read_lock(lock_path)
    dists = installed()
    build = torch_build(dists)
    skip = OURS | torch_platform_dependencies(dists)
    pins = {d.metadata["Name"]: release(d.version) for n, d in dists.items() if n not in skip}
    first = [n for n in ("pip", "setuptools") if n in pins]  # installed before everything else
    lines = [*head]
    if build:
        lines.append(f"{BUILD_LINE}{build[0]} ({build[1]}; pinned below as torch=={release(build[0])})")
    lines += [f"{n}=={pins[n]}" for n in first]
    lines += [f"{n}=={v}" for n, v in sorted(pins.items(), key=lambda kv: kv[0].lower()) if n not in first]
    print("\n".join(lines))
    return 0


def main(argv: list[str]) -> int:
    files = [a for a in argv if not a.startswith("--")]
    flags = [a for a in argv if a.startswith("--")]
    if len(files) != 1 or set(flags) - {"--report", "--write"} or len(flags) > 1:
        print(USAGE, file=sys.stderr)
        return 2
    try:
        if "--write" in flags:
            return write(files[0])
        return check(files[0], "--report" in flags)
    except (OSError, ValueError) as e:
        print(f"lock_check: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
