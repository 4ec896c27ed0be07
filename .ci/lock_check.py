"""Compare a virtual environment's installed packages with the lock (constraints.txt).

`python .ci/lock_check.py constraints.txt` prints every package whose installed version differs from
the lock, and every installed package the lock does not name; exit 1 if there is any (--report: print
them and exit 0, for `make test-latest`, where drift is the point).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_lock(path: str) -> dict[str, str]:
    pins = {}
    for line in open(path, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[norm(name)] = version.strip()
    return pins


def main(argv: list[str]) -> int:
    report = "--report" in argv
    lock = read_lock([a for a in argv if not a.startswith("--")][0])
    installed = {norm(d.metadata["Name"]): d.version.split("+")[0] for d in metadata.distributions()}
    ours = {"rlaif-kit"}
    changed = {n: (lock[n], v) for n, v in installed.items() if n in lock and lock[n] != v}
    extra = {n: v for n, v in installed.items() if n not in lock and n not in ours}
    for n, (want, got) in sorted(changed.items()):
        print(f"lock: {n} {want} -> installed {got}")
    for n, v in sorted(extra.items()):
        print(f"lock: {n} {v} is installed but not in the lock")
    if not changed and not extra:
        print(f"lock: the environment matches the lock ({len(lock)} packages)")
    return 0 if report or not (changed or extra) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
