"""Tokenising training examples: the prompt exactly as the engines build it, then the completion.

The prompt text comes from `rlaif.backends.local_prompts.prompt_text`, the function the local
engines sample and score with: the policy block's system prompt first (unless the chat has its own
system turn), then the chat template with its generation prompt, or the "User: …\\n\\nAssistant:"
transcript for a tokenizer without one. A policy is thus trained under the prompt its samples were
drawn with (iterative rounds, best-of-N data), and PPO's rollouts see it too.
"""

from __future__ import annotations

from rlaif.backends.local_prompts import has_chat_template, prompt_text, with_system_prompt

Messages = list[dict]


def render_prompt(tokenizer, prompt: Messages | str, system_prompt: str | None = None) -> str:
    """The text the model sees before the response (generation prompt included); a plain-string
    prompt is used as it is."""
    if isinstance(prompt, str):
        return prompt
    return prompt_text(tokenizer, prompt, system_prompt)


def render_completion(tokenizer, prompt: Messages | str, completion: Messages | str,
                      system_prompt: str | None = None) -> str:
    """The completion text exactly as the template writes it after `render_prompt`: the end of the
    templated conversation; without a template, the reply after "Assistant:" with a space, then EOS."""
    if isinstance(prompt, str) or isinstance(completion, str):
        text = completion if isinstance(completion, str) else "".join(m["content"] for m in completion)
        return text + (tokenizer.eos_token or "")
    if has_chat_template(tokenizer):
        head = render_prompt(tokenizer, prompt, system_prompt)
        full = tokenizer.apply_chat_template(with_system_prompt(prompt, system_prompt) + completion, tokenize=False)
        if full.startswith(head):
            return full[len(head):]
        return "".join(m["content"] for m in completion) + (tokenizer.eos_token or "")
    return " " + "".join(m["content"] for m in completion) + (tokenizer.eos_token or "")


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode(tokenizer, prompt: Messages | str, completion: Messages | str, max_length: int,
           max_prompt_length: int | None = None, system_prompt: str | None = None):
    """-> (input_ids, completion_mask): prompt tokens then completion tokens, 1 on completion.

    Prompt and completion are tokenised separately so the mask boundary is exact. Too long: the
    prompt keeps its last `max_prompt_length` tokens (default max_length // 2) — a cut that depends
    on the prompt alone, so chosen and rejected are conditioned on the same tokens whatever their
    lengths (TRL's `max_prompt_length`) — then the completion is cut at the end to fit max_length."""
    p = _ids(tokenizer, render_prompt(tokenizer, prompt, system_prompt))
    if isinstance(prompt, str) and tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        p = [tokenizer.bos_token_id] + p
    p = p[max(0, len(p) - (max_prompt_length or max_length // 2)):]
    c = _ids(tokenizer, render_completion(tokenizer, prompt, completion, system_prompt))[:max_length - len(p)]
    return p + c, [0] * len(p) + [1] * len(c)


def encode_text(tokenizer, prompt: Messages | str, completion: Messages | str, max_length: int,
                max_prompt_length: int | None = None, system_prompt: str | None = None) -> list[int]:
    return encode(tokenizer, prompt, completion, max_length, max_prompt_length, system_prompt)[0]
