"""How a prompt is written for a teacher: chat messages for instruct models, few-shot text for base ones.

Some chat templates refuse a system turn (Gemma-2's raises "System role not supported"). Such a teacher
gets the system text folded into its first user turn (system text, a blank line, the user's text), so a
recipe with a system prompt does not fail every row. Every backend builds its turns with `prompt_turns`,
and preflight renders the first prompt with the same function, so both see the same text.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, Optional

from persyn_hub.recipe.sections import TeacherConfig

logger = logging.getLogger(__name__)

SYSTEM_CHECK = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi"},
]
"""The conversation a template is tried on to learn whether it takes a system turn."""
_TEMPLATE_REFUSALS: dict[str, Optional[str]] = {}
"""Per process: chat template digest -> why it refuses a system turn (None: it takes one)."""


def chat_messages(teacher: TeacherConfig, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Chat teachers answer the conversation as it is, under their own system turn when they have one."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if teacher.system_prompt is None:
        return turns
    turns = [turn for turn in turns if turn["role"] != "system"]
    return [{"role": "system", "content": teacher.system_prompt}, *turns] if teacher.system_prompt else turns


def has_system_turn(turns: list[dict[str, str]]) -> bool:
    return any(turn["role"] == "system" for turn in turns)


def fold_system_turn(turns: list[dict[str, str]]) -> list[dict[str, str]]:
    """The system text (every system turn, in order), a blank line, then the first user turn's text; the
    system turns themselves are dropped. For templates that refuse a system turn."""
    system = "\n\n".join(turn["content"] for turn in turns if turn["role"] == "system")
    rest = [dict(turn) for turn in turns if turn["role"] != "system"]
    for turn in rest:
        if turn["role"] == "user":
            turn["content"] = f"{system}\n\n{turn['content']}" if system else turn["content"]
            break
    return rest


def prompt_turns(
    teacher: TeacherConfig, messages: list[dict[str, str]], refusal: Optional[str] = None
) -> list[dict[str, str]]:
    """The turns sent to a chat teacher: `chat_messages`, folded when `refusal` says its template takes
    no system turn. The one function every backend and preflight build chat turns with."""
    turns = chat_messages(teacher, messages)
    return fold_system_turn(turns) if refusal and has_system_turn(turns) else turns


def folds(teacher: TeacherConfig, messages: list[dict[str, str]], refusal: Optional[str]) -> bool:
    """Whether `prompt_turns` folds this row (a refusing template and a system turn to fold)."""
    return (
        bool(refusal)
        and teacher.prompt_format == "chat"
        and has_system_turn(chat_messages(teacher, messages))
    )


def template_turns(
    teacher: TeacherConfig, tokenizer: Any, messages: list[dict[str, str]], stats: Any = None
) -> list[dict[str, str]]:
    """`prompt_turns` for an in-process teacher: folded when `tokenizer`'s template refuses a system
    turn; each folded row is counted in `stats` (a `GenerationStats`) when given."""
    refusal = system_turn_refusal(tokenizer)
    if stats is not None and folds(teacher, messages, refusal):
        stats.add_fold(refusal or "")
    return prompt_turns(teacher, messages, refusal)


def system_turn_refusal(tokenizer: Any) -> Optional[str]:
    """Why `tokenizer`'s chat template refuses a system turn, or None when it takes one (or fails anyway,
    which is not a system-turn problem: rendering the prompt then reports it).

    Decided from the template alone and cached per template text, so every process of a launch reaches
    the same decision without talking to the others.
    """
    template = getattr(tokenizer, "chat_template", None)
    key = hashlib.sha256(repr(template).encode()).hexdigest()
    if key not in _TEMPLATE_REFUSALS:
        _TEMPLATE_REFUSALS[key] = _try_system_turn(tokenizer)
    return _TEMPLATE_REFUSALS[key]


def _try_system_turn(tokenizer: Any) -> Optional[str]:
    def render(turns: list[dict[str, str]]) -> None:
        tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)

    try:
        render(SYSTEM_CHECK)
        return None
    except Exception as error:  # noqa: BLE001 - templates raise whatever their author chose
        refused = error
    try:
        render(SYSTEM_CHECK[1:])
    except Exception:  # noqa: BLE001 - fails without a system turn too: not ours to fold
        return None
    message = " ".join(str(refused).split())[:200]
    return f"its chat template refuses a system turn ({type(refused).__name__}: {message})"


def completion_text(teacher: TeacherConfig, messages: list[dict[str, str]]) -> str:
    """Base teachers get the few-shot examples, then the last user turn in `completion_template`.

    The template's part after `{prompt}` (e.g. "\\nAnswer:") ends each example before its response, so
    the model continues the pattern; `few_shot_separator` separates examples.
    """
    template = teacher.completion_template
    shots = [
        template.format(prompt=example.prompt) + " " + example.response.strip()
        for example in teacher.few_shot
    ]
    prompt = messages[-1]["content"]
    return teacher.few_shot_separator.join(shots + [template.format(prompt=prompt)])


def default_stop(teacher: TeacherConfig) -> list[str]:
    """Stop strings: the recipe's, plus the example separator for few-shot completion teachers."""
    stop = list(teacher.generation.stop)
    if (
        teacher.prompt_format == "completion"
        and teacher.few_shot
        and teacher.few_shot_separator.strip("\n") == ""
    ):
        stop.append(teacher.few_shot_separator)
    return list(dict.fromkeys(stop))


def cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """(text up to the first stop string, whether one was found). TGI returns the stop sequence with the
    text, OpenAI-style servers strip it, local `generate` runs past it: one cut for every backend."""
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)
