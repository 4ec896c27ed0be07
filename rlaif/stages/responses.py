"""Stage 1, responses: sample `n` responses per prompt from the policy model.

One output record per prompt x sample. Its id hashes the prompt, the model and the sampling
settings, so a re-run with the same settings skips what is done and a change starts fresh records.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from pydantic import Field

from rlaif.backends.base import Engine, GenerationRequest
from rlaif.config import Strict
from rlaif.errors import UserError
from rlaif.records import model_identity, record_id


class ResponsesConfig(Strict):
    n: int = Field(1, ge=1)
    max_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    pure: bool = False  # no generation_config sampling options (GenerationRequest.pure): the round KL's samples

    def params(self) -> dict:
        """The settings a record's `params` hold (`pure` only when set)."""
        return self.model_dump(exclude=None if self.pure else {"pure"})


def expand(prompts: Iterable[dict], model: str, cfg: ResponsesConfig) -> list[dict]:
    """Prompt records -> one work item per (prompt, sample), with its id and its own seed."""
    return list(iter_expand(prompts, model, cfg))


def iter_expand(prompts: Iterable[dict], model: str, cfg: ResponsesConfig) -> Iterator[dict]:
    """`expand` a prompt at a time. A sample's seed comes from its prompt, the model's name, the
    sampling settings and its index; its id also from what else makes it another sample: `pure`,
    and the weights behind the name (`model_identity`: a folder trained again in place is a new
    model), so those are sampled afresh, with the same seeds."""
    params = cfg.model_dump(exclude={"pure"})
    other = {k: v for k, v in (("pure", cfg.pure), ("model_identity", model_identity(model))) if v}
    for p in prompts:
        for s in range(cfg.n):
            key = record_id("responses", p["prompt"], model, params, s)
            rid = record_id(key, other) if other else key
            yield {**p, "id": rid, "prompt_id": p["id"], "sample": s, "seed": int(key[:8], 16) ^ cfg.seed}


def check_context(engine: Engine, prompts: Iterable[dict], max_tokens: int, source) -> None:
    """Before any work: a prompt that cannot fit the engine's context with `max_tokens` more is an
    error naming its file and line. Engines that cannot tell (an HTTP API) are left to the server."""
    check = getattr(engine, "check_prompt", None)
    if check is None:
        return
    for p in prompts:
        try:
            check(p["prompt"], max_tokens)
        except UserError as e:
            where = f"{source}:{p['line']}" if p.get("line") else f"{source}: prompt {p['id']}"
            raise UserError(f"{where}: {e}") from None


def make_process(engine: Engine, cfg: ResponsesConfig):
    def process(batch: list[dict]) -> list[dict]:
        requests = [GenerationRequest(item["prompt"], temperature=cfg.temperature, top_p=cfg.top_p,
                                      max_tokens=cfg.max_tokens, seed=item["seed"], pure=cfg.pure) for item in batch]
        out = []
        for item, completion in zip(batch, engine.generate(requests)):
            out.append({
                "id": item["id"], "prompt_id": item["prompt_id"], "prompt": item["prompt"],
                "response": completion.texts[0], "model": engine.model, "sample": item["sample"],
                "params": cfg.params(), "finish_reason": (completion.finish_reasons or ["?"])[0],
                "tokens": completion.completion_tokens, **({"meta": item["meta"]} if item.get("meta") else {}),
            })
        return out

    return process
