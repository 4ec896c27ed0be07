""".ci/lock_check.py on virtual environments made here, holding the distributions a real install
would hold (their dist-info metadata written by the test, nothing downloaded): torch from PyPI as
the CUDA build with its nvidia-*, cuda-* and triton dependencies, torch's CPU build, a stray
package, a drifted pin, and `make lock`'s --write round trip (issue 31)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import ROOT

LOCK = ROOT / "constraints.txt"
CHECK = ROOT / ".ci" / "lock_check.py"

# torch 2.13.0's Requires-Dist as published on PyPI for Linux x86-64 (the CUDA build; read from the
# registry's metadata for torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl on 2026-11-24)
TORCH_CUDA_REQUIRES = [
    "filelock", "typing-extensions>=4.10.0", "setuptools>=77.0.3", "sympy>=1.13.3", "networkx>=2.5.1",
    "jinja2", "fsspec>=0.8.5",
    'cuda-toolkit[cublas,cudart,cufft,cufile,cupti,curand,cusolver,cusparse,nvjitlink,nvrtc,nvtx]==13.0.3; '
    'platform_system == "Linux"',
    'cuda-bindings<14,>=13.0.3; platform_system == "Linux" and python_version < "3.15"',
    'nvidia-cudnn-cu13==9.20.0.48; platform_system == "Linux"',
    'nvidia-cusparselt-cu13==0.8.1; platform_system == "Linux"',
    'nvidia-nccl-cu13==2.29.7; platform_system == "Linux"',
    'nvidia-nvshmem-cu13==3.4.5; platform_system == "Linux"',
    'triton==3.7.1; platform_system == "Linux" and python_version < "3.15"',
    'optree>=0.13.0; extra == "optree"', 'opt-einsum>=3.3; extra == "opt-einsum"', 'pyyaml; extra == "pyyaml"',
]
# the CPU build (torch-2.13.0+cpu): the same without the platform lines
TORCH_CPU_REQUIRES = [r for r in TORCH_CUDA_REQUIRES if "platform_system" not in r]

LINUX_X86 = "(sys_platform == 'linux' and platform_machine == 'x86_64')"
# cuda-toolkit 13.0.3.0 pulls one nvidia-* wheel per extra asked for (a subset of its real lines)
CUDA_TOOLKIT_REQUIRES = [f"nvidia-{lib}=={ver}.*; {LINUX_X86} and extra == '{extra}'" for extra, lib, ver in [
    ("cublas", "cublas", "13.1.1.3"), ("cublas", "cuda-nvrtc", "13.0.88"), ("cudart", "cuda-runtime", "13.0.96"),
    ("cufft", "cufft", "12.0.0.61"), ("cufile", "cufile", "1.15.1.6"), ("cupti", "cuda-cupti", "13.0.85"),
    ("curand", "curand", "10.4.0.35"), ("cusolver", "cusolver", "12.0.4.66"), ("cusparse", "cusparse", "12.6.3.3"),
    ("nvtx", "nvtx", "13.0.85"), ("npp", "npp", "13.0.1.2"), ("nvcc", "cuda-nvcc", "13.0.88")]]
CUDA_TOOLKIT_REQUIRES += [f"nvidia-nvjitlink<14,>=13.0.88; {LINUX_X86} and extra == '{e}'" for e in ("cufft", "nvjitlink")]

# what the CUDA build brings besides the locked packages, at the versions its requirements name
CUDA_DISTS = {
    "cuda-toolkit": ("13.0.3.0", CUDA_TOOLKIT_REQUIRES),
    "cuda-bindings": ("13.5.0", ["cuda-pathfinder>=1.4.2", "cuda-toolkit==13.*; extra == 'all'"]),
    "cuda-pathfinder": ("1.4.3", []),
    "nvidia-cudnn-cu13": ("9.20.0.48", ["nvidia-cublas"]),
    "nvidia-cusparselt-cu13": ("0.8.1", []),
    "nvidia-nccl-cu13": ("2.29.7", []),
    "nvidia-nvshmem-cu13": ("3.4.5", []),
    "triton": ("3.7.1", ["importlib-metadata; python_version < '3.10'", "cmake<4.0,>=3.20; extra == 'build'"]),
    "nvidia-cublas": ("13.1.1.3", []), "nvidia-cuda-nvrtc": ("13.0.88", []), "nvidia-cuda-runtime": ("13.0.96", []),
    "nvidia-cufft": ("12.0.0.61", []), "nvidia-cufile": ("1.15.1.6", []), "nvidia-cuda-cupti": ("13.0.85", []),
    "nvidia-curand": ("10.4.0.35", []), "nvidia-cusolver": ("12.0.4.66", []), "nvidia-cusparse": ("12.6.3.3", []),
    "nvidia-nvtx": ("13.0.85", []), "nvidia-nvjitlink": ("13.0.88", []),
}

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the CUDA build's markers name Linux")


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name] = version
    return pins


def site_packages(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def add_dist(venv: Path, name: str, version: str, requires=()) -> None:
    info = site_packages(venv) / f"{re.sub(r'[-.]+', '_', name)}-{version}.dist-info"
    info.mkdir()
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
             *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(lines) + "\n")


def make_venv(tmp_path: Path, build: str, skip=()) -> Path:
    """A venv (no pip) holding every locked distribution at its pin, torch as `build` ("cuda" or
    "cpu"), and for the CUDA build its platform dependencies; `packaging`'s code is copied in, since
    lock_check parses requirements with it."""
    venv = tmp_path / f"venv-{build}"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = site_packages(venv)
    import packaging

    shutil.copytree(Path(packaging.__file__).parent, site / "packaging")
    for name, version in lock_pins().items():
        if name == "torch" or name in skip:
            continue
        add_dist(venv, name, version)
    torch_version = lock_pins()["torch"] + ("+cpu" if build == "cpu" else "")
    add_dist(venv, "torch", torch_version, TORCH_CPU_REQUIRES if build == "cpu" else TORCH_CUDA_REQUIRES)
    (site / "torch").mkdir()
    cuda = "None" if build == "cpu" else "'13.0'"
    (site / "torch" / "version.py").write_text(f"from typing import Optional\n__version__ = '{torch_version}'\n"
                                               f"cuda: Optional[str] = {cuda}\nhip: Optional[str] = None\n")
    if build == "cuda":
        for name, (version, requires) in CUDA_DISTS.items():
            add_dist(venv, name, version, requires)
    return venv


def check(venv: Path, *args, lock: Path = LOCK) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), str(CHECK), str(lock), *args],
                          capture_output=True, text=True, timeout=60)


def test_the_lock_records_the_torch_build_it_was_green_on():
    build = [l for l in LOCK.read_text().splitlines() if l.startswith("# torch build: ")]
    assert len(build) == 1, build
    version = build[0].split()[3]
    assert version.split("+")[0] == lock_pins()["torch"] and re.fullmatch(r"[\d.]+(\+\w+)?", version)


def test_torch_from_pypi_with_its_cuda_dependencies_passes(tmp_path):
    venv = make_venv(tmp_path, "cuda")
    p = check(venv)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "installed but not in the lock" not in p.stdout
    accepted = re.search(r"accepted without a pin, torch's own dependencies on this platform \((\d+)\): (.*)", p.stdout)
    assert accepted, p.stdout
    assert int(accepted.group(1)) == len(CUDA_DISTS)
    for name in ("triton 3.7.1", "nvidia-cudnn-cu13 9.20.0.48", "cuda-toolkit 13.0.3.0", "nvidia-cublas 13.1.1.3",
                 "cuda-pathfinder 1.4.3", "nvidia-nvjitlink 13.0.88"):
        assert name in accepted.group(2)
    # the build is said, and it is not the one the lock was green on: a line, not a failure
    assert "torch 2.13.0 is the CUDA 13.0 build; the lock's suite was green on torch 2.13.0+cpu (CPU)" in p.stdout


def test_the_cpu_build_is_the_recorded_one_and_a_partial_install_passes(tmp_path):
    venv = make_venv(tmp_path, "cpu", skip={"trl", "ray", "playwright", "pytest", "llama_cpp_python"})  # make demo's
    p = check(venv)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "torch 2.13.0+cpu (CPU build) is the build the suite was green on" in p.stdout
    assert "accepted" not in p.stdout


def test_what_torch_does_not_require_is_still_reported(tmp_path):
    venv = make_venv(tmp_path, "cuda")
    add_dist(venv, "nvidia-ml-py", "13.580.82")  # an nvidia-* name that torch does not require
    add_dist(venv, "left-pad", "1.0.0")
    p = check(venv)
    assert p.returncode == 1
    assert "lock: left-pad 1.0.0 is installed but not in the lock" in p.stdout
    assert "lock: nvidia-ml-py 13.580.82 is installed but not in the lock" in p.stdout
    assert check(venv, "--report").returncode == 0  # make test-latest: drift is printed, not fatal


def test_a_platform_dependency_whose_marker_is_false_here_is_not_accepted(tmp_path):
    venv = make_venv(tmp_path, "cpu")
    info = next(site_packages(venv).glob("torch-*.dist-info"))
    meta = info / "METADATA"
    meta.write_text(meta.read_text() + 'Requires-Dist: nvidia-cudla==13.0.1; platform_machine == "s390x"\n')
    add_dist(venv, "nvidia-cudla", "13.0.1")
    p = check(venv)
    assert p.returncode == 1 and "nvidia-cudla 13.0.1 is installed but not in the lock" in p.stdout


def test_a_drifted_pin_fails_even_when_torch_requires_it(tmp_path):
    venv = make_venv(tmp_path, "cuda", skip={"sympy", "transformers"})
    add_dist(venv, "sympy", "1.15.0")  # torch requires sympy without a platform marker: it stays pinned
    add_dist(venv, "transformers", "5.25.0")
    p = check(venv)
    assert p.returncode == 1
    assert f"lock: sympy {lock_pins()['sympy']} -> installed 1.15.0" in p.stdout
    assert f"lock: transformers {lock_pins()['transformers']} -> installed 5.25.0" in p.stdout


def test_make_lock_leaves_the_platform_dependencies_out_and_records_the_build(tmp_path):
    venv = make_venv(tmp_path, "cuda")
    p = check(venv, "--write")
    assert p.returncode == 0, p.stderr
    new = tmp_path / "constraints.txt"
    new.write_text(p.stdout)
    lines = p.stdout.splitlines()
    assert lines[0] == LOCK.read_text().splitlines()[0]  # the opening comments are kept
    assert "# torch build: 2.13.0 (CUDA 13.0; pinned below as torch==2.13.0)" in lines
    assert sum(l.startswith("# torch build: ") for l in lines) == 1
    assert "torch==2.13.0" in lines and "setuptools==" + lock_pins()["setuptools"] in lines
    assert not [l for l in lines if l.startswith(("nvidia", "cuda", "triton"))]
    pins = [l.split("==")[0] for l in lines if "==" in l and not l.startswith("#")]
    assert pins[:2] == ["pip", "setuptools"]
    again = check(venv, lock=new)
    assert again.returncode == 0 and "is the build the suite was green on" in again.stdout, again.stdout


def test_usage_and_a_damaged_lock_exit_2(tmp_path):
    venv = make_venv(tmp_path, "cpu", skip=set(lock_pins()))
    assert check(venv, "--frobnicate").returncode == 2
    bad = tmp_path / "bad.txt"
    bad.write_text("torch>=2\n")
    p = check(venv, lock=bad)
    assert p.returncode == 2 and p.stderr.strip() == f"lock_check: {bad}:1: expected NAME==VERSION, got 'torch>=2'"
