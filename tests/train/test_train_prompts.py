"""Training and serving build one prompt (rlaif/backends/local_prompts.py, rlaif/train/encoding.py):
for the same messages and engine block, every trainer conditions on the token ids the engine
samples and scores with, system prompt included, with a chat template and without one."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from train_fixtures import save_tiny, tiny_llama, tiny_tokenizer, toy_prefs, write_jsonl

from rlaif.backends.transformers_engine import TransformersEngine  # noqa: E402
from rlaif.config import EngineConfig  # noqa: E402
from rlaif.train.encoding import encode  # noqa: E402
from rlaif.train.examples import Pair  # noqa: E402
from rlaif.train.dpo import DPOBatches  # noqa: E402
from rlaif.train.kto import KTOBatches, Unpaired  # noqa: E402
from rlaif.train.rollouts import PromptBatches  # noqa: E402
from rlaif.train.reward_model import PairBatches  # noqa: E402
from rlaif.train.sft import SFTBatches  # noqa: E402
from rlaif.train.examples import PromptCompletion  # noqa: E402

CHAT = [{"role": "user", "content": "tell me about cats."}]
REPLY = [{"role": "assistant", "content": "cats purr."}]
OTHER = [{"role": "assistant", "content": "no."}]


def _prompt_part(ids, mask) -> list[int]:
    ids, mask = list(ids), list(mask)
    return ids[:mask.index(1)]


@pytest.mark.parametrize("template", [True, False], ids=["chat-template", "no-template"])
@pytest.mark.parametrize("system", ["answer in one line.", None], ids=["system-prompt", "no-system-prompt"])
def test_every_trainer_conditions_on_the_engines_prompt_ids(template, system):
    tok = tiny_tokenizer()
    if not template:
        tok.chat_template = None
    engine = TransformersEngine(EngineConfig(model="tiny", device="cpu", system_prompt=system),
                                model=tiny_llama(tok), tokenizer=tok)
    want = engine._prompt_ids(CHAT)
    assert tok.decode(want).count(system or "\0") == (1 if system else 0)  # the engine puts it in its prompt
    sp = engine.cfg.system_prompt

    assert _prompt_part(*encode(tok, CHAT, REPLY, 512, system_prompt=sp)) == want
    sft = SFTBatches(tok, [PromptCompletion(CHAT, REPLY)], 512, system_prompt=sp)
    assert _prompt_part(*sft.items[0]) == want
    dpo = DPOBatches(tok, [Pair(CHAT, REPLY, OTHER, 1.0)], 512, system_prompt=sp)
    c_ids, c_mask, r_ids, r_mask, _ = dpo.items[0]
    assert _prompt_part(c_ids, c_mask) == _prompt_part(r_ids, r_mask) == want
    kto = KTOBatches(tok, [Unpaired(CHAT, REPLY, True)], 512, system_prompt=sp)
    assert kto.prompts[0] == want
    rm = PairBatches(tok, [Pair(CHAT, REPLY, OTHER, 1.0)], 512, system_prompt=sp)
    assert rm.items[0][0][:len(want)] == want
    assert PromptBatches(tok, [CHAT], 512, sp).ids[0] == want  # PPO's (and GRPO's) rollout prompts


def test_without_a_template_the_reply_follows_the_transcript():
    """The engines' transcript for base models: "Role: text" turns, the assistant's opened; the
    trained reply then reads as a reader of that transcript would write it."""
    tok = tiny_tokenizer()
    tok.chat_template = None
    ids, mask = encode(tok, CHAT, REPLY, 512, system_prompt="be brief.")
    text = tok.decode(ids)
    assert text == "System: be brief.\n\nUser: tell me about cats.\n\nAssistant: cats purr.<|im_end|>".replace(
        "S", "<unk>").replace("U", "<unk>").replace("A", "<unk>")  # the tiny vocabulary has no capitals
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == " cats purr.<|im_end|>"


def test_the_pipeline_trains_with_the_policy_blocks_system_prompt(tmp_path):
    """A pipeline's trainer (here DPO, one step, as a round trains) gets the policy block's system
    prompt, so its prompts are the ones the policy engine sampled the pairs under."""
    import json

    import yaml

    from rlaif.pipeline import Pipeline
    from rlaif.pipeline_config import load_pipeline
    from rlaif.train.dpo import DPOConfig, train_dpo

    policy = save_tiny(tmp_path / "policy", seed=3)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"tell me about {t}"} for t in "abcdefghijkl"])
    cfg = yaml.safe_load((Path(__file__).resolve().parents[2] / "pipelines" / "iterative_dpo.yaml").read_text())
    cfg["policy"].update(model=str(policy), device="cpu", system_prompt="answer in one line.")
    cfg["judge"].update(model=str(policy), device="cpu")
    cfg["prompts"] = {"file": str(prompts), "limit": 6}
    cfg["rounds"].update(count=1, prompts_per_round=3, eval={"policy_prompts": 2})
    (tmp_path / "pipeline.yaml").write_text(yaml.safe_dump(cfg))
    _, config = load_pipeline(str(tmp_path / "pipeline.yaml"))
    p = Pipeline(config, tmp_path / "run")
    prefs = write_jsonl(tmp_path / "prefs.jsonl", toy_prefs(4))
    p.train("dpo", DPOConfig, {"prefs": str(prefs), "policy": str(policy), "seed": 0}, train_dpo,
            block={"max_steps": 1, "batch_size": 2, "progress": False})
    manifest = json.loads((tmp_path / "run" / "dpo" / "manifest.json").read_text())
    assert manifest["stages"]["dpo"]["config"]["system_prompt"] == "answer in one line."
