"""The engine a stage holds when its batches run on an executor's actors: a stand-in on the driver,
the real engine (built from its `EngineConfig`) inside each actor."""

from __future__ import annotations

from rlaif.config import EngineConfig

_fleet_url: str | None = None  # in a Ray actor of a fleet: the server its openai engines talk to


def use_fleet_url(url: str | None) -> None:
    """Called once in each actor of an executor with `base_urls`: the openai engines it builds talk
    to this server instead of their own `base_url`."""
    global _fleet_url
    _fleet_url = url


class RemoteEngine:
    """Stands in for an engine that the executor's actors build from `cfg`.

    On the driver it answers only what the stage code asks before any batch runs (`name`, `model`,
    `independent_requests`): the same values the real engine reports, so record ids and the
    `labeler`/`model` fields are those of a local run. It never loads weights there. Pickled into
    an actor, its first other attribute access loads the real engine (`load_engine(cfg)`) once, and
    every call goes to it."""

    def __init__(self, cfg: EngineConfig):
        self.cfg = cfg
        self.name = cfg.kind
        self.model = cfg.model
        self.independent_requests = cfg.kind == "openai"  # as OpenAIEngine sets it
        self._engine = None
        self._on_driver = True
        self.actor_stats: list[dict] = []

    def __getstate__(self):
        return {"cfg": self.cfg}

    def __setstate__(self, state):
        self.__init__(state["cfg"])
        self._on_driver = False

    def real(self):
        if self._engine is None:
            from rlaif.backends import load_engine

            cfg = self.cfg
            if cfg.kind == "openai" and _fleet_url is not None:
                cfg = cfg.model_copy(update={"base_url": _fleet_url})
            engine = load_engine(cfg)
            if (engine.name, engine.model) != (self.name, self.model):
                raise RuntimeError(f"engine built from {self.cfg.kind}:{self.cfg.model} reports "
                                   f"{engine.name}:{engine.model}; ids would differ from a local run")
            self._engine = engine
        return self._engine

    def __getattr__(self, attr):
        if attr.startswith("__") or self.__dict__.get("_on_driver", True):
            raise AttributeError(attr)  # on the driver: nothing else (no context check, no weights)
        return getattr(self.real(), attr)

    def stats(self) -> dict:
        return {"executor": "ray", "actors": self.actor_stats}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None


__all__ = ["RemoteEngine", "use_fleet_url"]
