"""How a policy is prompted and where its response ends: the policy format (plain Python).

``raw`` (the paper's): a base model continues the task's text (``tasktext.policy_prompt``: the
post + "TL;DR:", the dialogue + "Assistant:"); the response ends at EOS or at the task's next
turn marker ("\\n\\nHuman:"), which is not part of it.

``chat``: the model's chat template. A conversational task's dialogue becomes its user/assistant
messages (``tasktext.dialogue_messages``); any other input becomes one user message: an
instruction made from the task's names ("Write a short summary of the text below.") and the
input. The response is the assistant turn, ended by the template's end-of-turn token (e.g.
``<|im_end|>``): SFT targets end with it, sampling stops on it and leaves it out of the text.

``auto``: ``chat`` when the tokenizer has a chat template, else ``raw``. What a job records
on its Policy, Sample and RewardModel rows is the resolved format (``raw`` or ``chat``).

SFT targets, sampling, RL rollouts, evaluation samples and the reward model's inputs all build
their prompts here, so a policy and its reward model read the same text.
"""
from dataclasses import dataclass

from evalsite.tasktext import as_task_text, clean_response, dialogue_messages, policy_prompt  # noqa: F401

FORMATS = ("raw", "chat", "auto")
RESOLVED_FORMATS = ("raw", "chat")


@dataclass(frozen=True)
class PolicyInput:
    prompt: str                  # the text the policy continues (chat: the rendered template)
    stop_strings: tuple = ()     # text that ends a response; it and what follows are dropped
    stop_token_ids: tuple = ()   # tokens that end a response besides EOS (chat: end of turn)
    end_token_ids: tuple = ()    # what an SFT target ends with (empty: the tokenizer's EOS)


def has_chat_template(tokenizer):
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_format(fmt, tokenizer):
    """``raw`` or ``chat`` for ``fmt`` (raw, chat or auto) with this tokenizer; ValueError for a
    format that is unknown, or chat for a tokenizer without a chat template."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown policy format {fmt!r}: use one of {', '.join(FORMATS)}")
    if fmt == "auto":
        return "chat" if has_chat_template(tokenizer) else "raw"
    if fmt == "chat" and not has_chat_template(tokenizer):
        raise ValueError("the chat policy format needs a tokenizer with a chat template; this one has none "
                         "(use raw, or auto to pick chat only where there is one)")
    return fmt


def chat_instruction(task):
    """The user message's instruction for a non-conversational task, from its names."""
    return f"Write a short {task.response_name} of the {task.input_name.lower()} below."


def chat_messages(task, context):
    """The chat messages a policy in ``chat`` format is prompted with."""
    task = as_task_text(task)
    if task.conversational:
        messages = dialogue_messages(context.rstrip())
        if messages and messages[-1]["role"] == "user":
            return messages
        # not Human:/Assistant: turns (or the last turn is the assistant's): the text as one user turn
        return [{"role": "user", "content": context.strip()}]
    return [{"role": "user", "content": f"{chat_instruction(task)}\n\n{context.strip()}"}]


def chat_turn_end(tokenizer):
    """(text, token ids) the template closes an assistant turn with, e.g. ("<|im_end|>", [2])."""
    probe = "PROBE"
    messages = [{"role": "user", "content": "hi"}]
    head = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    whole = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": probe}], tokenize=False)
    at = whole.find(probe, len(head) - len(probe) if len(head) > len(probe) else 0)
    tail = whole[at + len(probe):] if at >= 0 else ""
    end = tail.rstrip() or tail  # "<|im_end|>\n" -> "<|im_end|>"; a template that ends turns with "\n" keeps it
    if not end:
        return "", [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    return end, tokenizer(end, add_special_tokens=False)["input_ids"]


def policy_input(task, context, tokenizer, fmt):
    """The prompt and stops of ``context`` for a policy in format ``fmt`` (raw, chat or auto)."""
    task = as_task_text(task)
    markers = tuple(m for m in task.turn_markers if m)
    if resolve_format(fmt, tokenizer) == "raw":
        return PolicyInput(prompt=policy_prompt(task, context), stop_strings=markers)
    prompt = tokenizer.apply_chat_template(chat_messages(task, context), tokenize=False, add_generation_prompt=True)
    end_text, end_ids = chat_turn_end(tokenizer)
    if len(end_ids) == 1:  # one token: a stop token, checked on the device
        return PolicyInput(prompt=prompt, stop_strings=markers, stop_token_ids=tuple(end_ids),
                           end_token_ids=tuple(end_ids))
    # several tokens: a stop string (the turn markers too: a chat model that writes one has left its turn)
    return PolicyInput(prompt=prompt, stop_strings=markers + ((end_text,) if end_text else ()),
                       end_token_ids=tuple(end_ids))


def response_end_ids(tokenizer, fmt):
    """The tokens an SFT target ends with in format ``fmt``: None (EOS) in raw, the template's
    end-of-turn token(s) in chat."""
    if resolve_format(fmt, tokenizer) == "raw":
        return None
    return list(chat_turn_end(tokenizer)[1])
