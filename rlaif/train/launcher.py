"""Training stages of a pipeline as `accelerate launch` subprocesses.

`rlaif run PIPELINE --out OUT --launcher accelerate --config_file fsdp2 --num_processes 8` keeps the
pipeline itself one process (it holds OUT's lock, the engines and the resumable stages) and runs
each training stage as

    accelerate launch --config_file F --num_processes N -m rlaif.train.<trainer> OUT/<stage>/launch.yaml

with the stage's config written to that YAML. The trainer writes its summary.json as in-process,
which the pipeline reads back. `--config_file` is a path or the name of a shipped config
(cpu_ddp, ddp, fsdp2, zero2, zero3; the files of configs/accelerate/).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

from rlaif.errors import UserError

SHIPPED = ("cpu_ddp", "ddp", "fsdp2", "zero2", "zero3")
TRAINERS = {"rlaif.train.sft": "sft", "rlaif.train.reward_model": "reward_model", "rlaif.train.dpo": "dpo",
            "rlaif.train.kto": "kto", "rlaif.train.ppo": "ppo", "rlaif.train.grpo_loop": "grpo"}


def accelerate_config(spec: str) -> Path:
    """A path to an accelerate config YAML, or a shipped config's name."""
    path = Path(spec)
    if path.is_file():
        return path.resolve()
    if spec in SHIPPED:
        for base in (Path(__file__).resolve().parent.parent / "_data" / "accelerate",  # installed wheel
                     Path(__file__).resolve().parent.parent.parent / "configs" / "accelerate"):  # checkout
            if (base / f"{spec}.yaml").is_file():
                return base / f"{spec}.yaml"
    raise UserError(f"--config_file {spec}: no such accelerate config file (give a path, or one of the shipped "
                    f"configs: {', '.join(SHIPPED)})")


class AccelerateLauncher:
    """Runs a trainer function's module under `accelerate launch`; anything else (a closure over the
    pipeline's own engines, e.g. PPO rewarded by the judge) runs in this process."""

    def __init__(self, config_file: str | None = None, num_processes: int | None = None,
                 main_process_port: int | None = None):
        # None: accelerate's own default config (`accelerate config`), as a bare `accelerate launch`
        self.config_file = accelerate_config(config_file) if config_file else None
        if num_processes is not None and num_processes < 1:
            raise UserError(f"--num_processes {num_processes}: expected a positive number")
        self.num_processes = num_processes
        self.port = main_process_port

    def command(self, module: str, cfg_file: Path) -> list[str]:
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        if self.config_file is not None:
            cmd += ["--config_file", str(self.config_file)]
        if self.num_processes is not None:
            cmd += ["--num_processes", str(self.num_processes)]
        if self.port is not None:
            cmd += ["--main_process_port", str(self.port)]
        return cmd + ["-m", module, str(cfg_file)]

    def __call__(self, fn, cfg) -> dict:
        module = getattr(fn, "__module__", None)
        if module not in TRAINERS or getattr(fn, "__name__", "") == "<lambda>":
            print(f"{Path(cfg.output_dir).name}: runs in this process (its reward comes from the pipeline's own "
                  "engine, which a launched process cannot reach)", flush=True)
            return fn(cfg)
        out = Path(cfg.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        cfg_file = out / "launch.yaml"
        cfg_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        (out / "summary.json").unlink(missing_ok=True)
        cmd = self.command(module, cfg_file)
        print("launch: " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
        if proc.returncode != 0 or not (out / "summary.json").is_file():
            raise RuntimeError(f"{TRAINERS[module]}: `accelerate launch` exited with {proc.returncode}; "
                               f"its output is above (config: {cfg_file})")
        return json.loads((out / "summary.json").read_text())
