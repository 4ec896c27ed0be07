"""OpenRLHF's reward inputs, turned into what the judge reads.

OpenRLHF 0.11.2 (openrlhf/utils/agent.py, `SingleTurnAgentExecutor.execute`) sends, per rollout,
`query` = the policy tokenizer's decode of prompt tokens + response tokens with special tokens
kept, `prompts` = the prompt text it tokenized (usually already rendered by the policy's chat
template), and `labels` = the dataset's label column. So:

- the reply is what follows the prompt in the query, less the end-of-turn markers the decode kept
  (`<|im_end|>`, `<|eot_id|>`, `</s>`, ...). When the decode does not reproduce the prompt exactly
  (a prompt cut from the left to fit `max_len`, a tokenizer that normalises spaces), the reply
  starts after the last place the prompt's tail appears;
- the prompt is read back into chat messages when it is a rendered ChatML, Llama-3 or Gemma
  conversation (the judge then sees the turns, not the template's markers); any other text is one
  user turn, as written.
"""

from __future__ import annotations

import re

from rlaif.errors import UserError

END_MARKERS = ("<|im_end|>", "<|eot_id|>", "<|end_of_text|>", "<|endoftext|>", "</s>", "<end_of_turn>", "<eos>",
               "<|end|>", "<|eom_id|>", "<｜end▁of▁sentence｜>")
START_MARKERS = ("<|begin_of_text|>", "<s>", "<bos>", "<｜begin▁of▁sentence｜>")

_TEMPLATES = (
    # ChatML (Qwen, SmolLM, many others)
    re.compile(r"<\|im_start\|>(system|user|assistant|tool)\n(.*?)(?:<\|im_end\|>|$)", re.S),
    # Llama 3
    re.compile(r"<\|start_header_id\|>(system|user|assistant|ipython)<\|end_header_id\|>\n\n(.*?)(?:<\|eot_id\|>|$)",
               re.S),
    # Gemma
    re.compile(r"<start_of_turn>(user|model)\n(.*?)(?:<end_of_turn>|$)", re.S),
)
_ROLES = {"model": "assistant", "ipython": "tool"}
TAIL = 64  # characters of the prompt's end looked for when the query does not start with the prompt


def strip_end(text: str, markers=END_MARKERS) -> str:
    """`text` without the end-of-turn markers (and the whitespace between them) at its end."""
    while True:
        t = text.rstrip()
        for m in markers:
            if t.endswith(m):
                text = t[: -len(m)]
                break
        else:
            return t


def split_query(query: str, prompt: str) -> str:
    """The reply inside an OpenRLHF query (prompt + response decoded as one string)."""
    if not isinstance(query, str) or not isinstance(prompt, str):
        raise UserError("query and prompt: expected text")
    if query.startswith(prompt):
        return strip_end(query[len(prompt):])
    tail = prompt.rstrip()[-TAIL:]
    at = query.rfind(tail) if tail else -1
    if at < 0:
        raise UserError("query does not contain its prompt: expected the query to be the prompt followed by the "
                        "response (OpenRLHF sends decode(prompt tokens + response tokens) as query)")
    return strip_end(query[at + len(tail):])


def prompt_messages(prompt: str) -> str | list[dict]:
    """A rendered chat prompt read back into messages (the empty assistant turn the generation
    prompt opens is dropped); text in no known template comes back as it is, less a leading BOS."""
    if not isinstance(prompt, str):
        raise UserError("prompt: expected text")
    text = prompt
    for m in START_MARKERS:
        if text.startswith(m):
            text = text[len(m):]
    for pattern in _TEMPLATES:
        found = [(_ROLES.get(r, r), c.strip()) for r, c in pattern.findall(text)]
        if found:
            messages = [{"role": r, "content": c} for r, c in found]
            while messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
                messages.pop()
            messages = [m for m in messages if m["role"] in ("system", "user", "assistant")]
            if any(m["role"] == "user" for m in messages):
                return messages
    return text.strip() or prompt


def judge_inputs(queries, prompts) -> tuple[list, list[str]]:
    """(prompts for the judge, replies) from OpenRLHF's `query` and `prompts` lists."""
    if isinstance(queries, str):
        queries = [queries]
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(queries, list) or not all(isinstance(q, str) for q in queries):
        raise UserError("query: expected a list of strings (prompt + response, decoded)")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise UserError("prompts: expected a list of strings, the prompt of each query")
    if len(prompts) != len(queries):
        raise UserError(f"query and prompts: {len(queries)} queries and {len(prompts)} prompts; expected one prompt "
                        "per query")
    replies = []
    for i, (q, p) in enumerate(zip(queries, prompts)):
        try:
            replies.append(split_query(q, p))
        except UserError as e:
            raise UserError(f"query {i}: {e}") from None
    return [prompt_messages(p) for p in prompts], replies


__all__ = ["split_query", "prompt_messages", "judge_inputs", "strip_end", "END_MARKERS"]
