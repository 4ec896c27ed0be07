"""The three model roles of a run, each served by its own engine block.

- `policy`: samples responses, is the model trained, and is the reference;
- `critic`: writes critiques and revisions (defaults to the policy, as in Constitutional AI);
- `judge`: labels pairs, is checked against human labels, judges the policy evaluation (win rate,
  harmless rate), gives the direct-RLAIF reward and scores best-of-N. When no judge is named it
  falls back to the policy, and the run says so: the model being trained then judges itself.

`Engines` builds each engine once, the first time a stage asks for its role, and shares one
engine between roles whose blocks are identical. It keeps per-role request counts across the
engine being closed for training and built again afterwards.
"""

from __future__ import annotations

from typing import Mapping

from rlaif.config import EngineConfig, config_hash
from rlaif.errors import UserError

ROLES = ("policy", "critic", "judge")
TRAINABLE_KINDS = ("transformers", "vllm")  # kinds whose model is a local/hub checkpoint the trainers can load


def resolve_roles(policy: EngineConfig | None, critic: EngineConfig | None, judge: EngineConfig | None,
                  engine: EngineConfig | None = None) -> tuple[dict[str, EngineConfig], dict[str, str]]:
    """Each role's engine block, and for each role that had none of its own, where it came from.

    `engine` is the single block of older pipelines: it serves every role not given its own."""
    base = policy or engine or EngineConfig()
    configs = {"policy": base, "critic": critic or base, "judge": judge or engine or base}
    defaulted = {}
    if policy is None:
        defaulted["policy"] = "engine" if engine is not None else "default"
    if critic is None:
        defaulted["critic"] = "policy"
    if judge is None:
        defaulted["judge"] = "engine" if engine is not None else "policy"
    return configs, defaulted


def judge_is_policy(configs: Mapping[str, EngineConfig]) -> bool:
    return _key(configs["judge"]) == _key(configs["policy"])


def check_trainable(policy: EngineConfig, source: str) -> None:
    if policy.kind not in TRAINABLE_KINDS:
        raise UserError(f"{source}: policy.kind is {policy.kind!r}, but this pipeline trains the policy; "
                        f"the policy must be a model the trainers can load (kind {' or '.join(TRAINABLE_KINDS)}). "
                        "Put a server or GGUF model in the judge or critic block instead")


def _key(cfg: EngineConfig) -> str:
    return config_hash(cfg)


def display_url(url: str | None) -> str | None:
    from rlaif.backends.http_faults import display_url as without_credentials

    return without_credentials(url) if url else None


def describe_engine(cfg: EngineConfig) -> dict:
    """What a role runs on, fit for manifests and reports: no key, no credentials in the URL."""
    out = {"engine": cfg.kind, "model": cfg.model}
    if cfg.kind == "openai":
        out["base_url"] = display_url(cfg.base_url)
        out["api_key_env"] = cfg.api_key_env  # the variable's name, never its value
    if cfg.system_prompt:
        out["system_prompt"] = cfg.system_prompt
    return out


class Engines:
    """Role -> engine, built on first use; identical blocks share one engine."""

    def __init__(self, configs: Mapping[str, EngineConfig], defaulted: Mapping[str, str] | None = None,
                 loader=None):
        """`loader`: EngineConfig -> engine (default `rlaif.backends.load_engine`)."""
        self.configs = dict(configs)
        self.defaulted = dict(defaulted or {})
        self.loader = loader
        self._live: dict[str, object] = {}  # config key -> engine
        self._usage: dict[str, dict] = {}  # config key -> summed numeric stats of closed engines

    def __getitem__(self, role: str):
        if role not in self.configs:
            raise KeyError(role)
        key = _key(self.configs[role])
        if key not in self._live:
            from rlaif.backends import load_engine

            self._live[key] = (self.loader or load_engine)(self.configs[role])
        return self._live[key]

    def loaded(self, role: str) -> bool:
        return _key(self.configs[role]) in self._live

    def shared_with(self, role: str) -> list[str]:
        key = _key(self.configs[role])
        return [r for r in ROLES if r != role and _key(self.configs[r]) == key]

    def close(self, keep: tuple[str, ...] = ()) -> None:
        """Close every engine not serving a role in `keep` (training frees memory this way)."""
        kept = {_key(self.configs[r]) for r in keep}
        for key in [k for k in self._live if k not in kept]:
            engine = self._live.pop(key)
            self._add_usage(key, engine)
            engine.close()

    def _add_usage(self, key: str, engine) -> None:
        stats = engine.stats() if callable(getattr(engine, "stats", None)) else {}
        total = self._usage.setdefault(key, {})
        for name, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                total[name] = round(total.get(name, 0) + value, 3)

    def usage(self, role: str) -> dict:
        """Requests, tokens and seconds this role's engine served in this run (shared engines
        report what they served for all of their roles)."""
        key = _key(self.configs[role])
        total = dict(self._usage.get(key, {}))
        engine = self._live.get(key)
        if engine is not None and callable(getattr(engine, "stats", None)):
            for name, value in engine.stats().items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    total[name] = round(total.get(name, 0) + value, 3)
        return total

    def describe(self) -> dict:
        """Per role: engine, model (no secrets), where a defaulted role came from, which roles share it."""
        out = {}
        for role in ROLES:
            entry = describe_engine(self.configs[role])
            if role in self.defaulted:
                entry["defaulted_to"] = self.defaulted[role]
            shared = self.shared_with(role)
            if shared:
                entry["same_engine_as"] = shared
            out[role] = entry
        return out
