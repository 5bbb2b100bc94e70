"""How a prompt is written for a teacher: chat messages for instruct models, few-shot text for base ones."""

from __future__ import annotations

from persyn_hub.config import TeacherConfig


def chat_messages(teacher: TeacherConfig, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """Chat teachers answer the conversation as it is, under their own system turn when they have one."""
    turns = [{"role": m["role"], "content": m["content"]} for m in messages]
    if teacher.system_prompt is None:
        return turns
    turns = [turn for turn in turns if turn["role"] != "system"]
    return [{"role": "system", "content": teacher.system_prompt}, *turns] if teacher.system_prompt else turns


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
