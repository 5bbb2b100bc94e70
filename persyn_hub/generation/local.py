"""In-process generation with transformers: the embedded default, no server needed.

Rows are sorted by prompt length so each batch pads little, generated greedily (or sampled with a
per-batch seed), cut at stop strings, and checkpointed batch by batch.
"""

from __future__ import annotations

import logging
import zlib

import torch
from datasets import Dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteriaList,
    StopStringCriteria,
)

from persyn_hub.bundled import resolve_model
from persyn_hub.fingerprint import run_fingerprint
from persyn_hub.generation.checkpoint import CheckpointedGenerator, GenerationCheckpoint
from persyn_hub.generation.engines import held_engine
from persyn_hub.generation.prompting import completion_text, cut_at_stop, default_stop, template_turns
from persyn_hub.generation.stats import GenerationStats
from persyn_hub.recipe.dtypes import local_device, resolve_dtype
from persyn_hub.recipe.sections import TeacherConfig

logger = logging.getLogger(__name__)


def load_teacher(teacher: TeacherConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    path = resolve_model(teacher.model or "")
    device = local_device()
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=teacher.trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=resolve_dtype(teacher.dtype, device), trust_remote_code=teacher.trust_remote_code
    )
    model.to(device).eval()
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def render_prompt(
    teacher: TeacherConfig,
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict],
    stats: GenerationStats | None = None,
) -> str:
    """The text the teacher continues; generation and preflight both render with it. A chat template
    that refuses a system turn gets it folded into the first user turn (counted in `stats` when given)."""
    if teacher.prompt_format == "chat":
        return tokenizer.apply_chat_template(
            template_turns(teacher, tokenizer, messages, stats), add_generation_prompt=True, tokenize=False
        )
    text = completion_text(teacher, messages)
    if tokenizer.bos_token and not text.startswith(tokenizer.bos_token):
        text = tokenizer.bos_token + text
    return text


class LocalGenerator(CheckpointedGenerator):
    """In-process transformers: the rows the checkpoint lacks, in batches, each batch checkpointed."""

    def __init__(
        self, teacher: TeacherConfig, checkpoint: GenerationCheckpoint, stats: GenerationStats, seed: int
    ):
        super().__init__(teacher, checkpoint, stats)
        self.seed = seed
        self.stop = default_stop(teacher)
        self._model: PreTrainedModel | None = None
        self._tokenizer: PreTrainedTokenizerBase | None = None
        self._stopping: StoppingCriteriaList | None = None

    def _load(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        if self._model is None:
            # held from one chunk of the stage to the next (released by the stage runner)
            key = ("transformers-teacher", self.teacher.model, self.teacher.dtype, tuple(self.stop))
            self._model, self._tokenizer, self._stopping = held_engine(key, self._load_engine)
        assert self._tokenizer is not None
        return self._model, self._tokenizer

    def _load_engine(self) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, StoppingCriteriaList | None]:
        model, tokenizer = load_teacher(self.teacher)
        # `generate(stop_strings=...)` rebuilds this from the whole vocabulary on every call: about
        # 1.3 s per batch with Gemma's 262k tokens. It holds no state between calls, so build it once.
        stopping = StoppingCriteriaList([StopStringCriteria(tokenizer, self.stop)]) if self.stop else None
        return model, tokenizer, stopping

    def release(self) -> None:
        """Drop this generator's references; the engine itself is held until the stage ends."""
        self._model = self._tokenizer = self._stopping = None

    @torch.inference_mode()
    def _generate(self, rows: list[dict]) -> list[dict]:
        model, tokenizer = self._load()
        texts = [render_prompt(self.teacher, tokenizer, row["messages"], self.stats) for row in rows]
        encoded = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            model.device
        )
        config = self.teacher.generation
        sampling = config.temperature > 0
        if sampling:
            torch.manual_seed(self.seed + sum(zlib.crc32(row["prompt_id"].encode()) for row in rows) % 2**31)
        eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        output = model.generate(
            **encoded,
            max_new_tokens=config.max_new_tokens,
            do_sample=sampling,
            temperature=config.temperature if sampling else None,
            top_p=config.top_p if sampling else None,
            top_k=None,
            stopping_criteria=self._stopping,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_ids or None,
        )
        prompt_length = encoded["input_ids"].shape[1]
        records = []
        for row, prompt_mask, generated in zip(rows, encoded["attention_mask"], output[:, prompt_length:]):
            tokens = generated.tolist()
            ended = False
            for position, token in enumerate(tokens):
                if token in eos_ids or token == tokenizer.pad_token_id:
                    tokens, ended = tokens[:position], True
                    break
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            text, stopped = cut_at_stop(text, self.stop)
            finish = "stop" if ended or stopped else "length"
            response = text.strip()
            error = None if response else f"empty completion (finish_reason={finish})"
            if error:
                self.stats.add_failure(error)
            records.append(
                {
                    "prompt_id": row["prompt_id"],
                    "response": response if response else None,
                    "finish_reason": finish,
                    "num_tokens": len(tokens),
                    "num_prompt_tokens": int(prompt_mask.sum()),
                    "error": error,
                }
            )
            self.stats.prompt_tokens += int(prompt_mask.sum())
            self.stats.completion_tokens += len(tokens)
        self.stats.requests += len(rows)
        return records

    def _refuse_too_long(self, rows: list[dict], records: dict[str, dict]) -> list[dict]:
        """Prompts that leave no room to answer get a per-row error instead of a crash or a cut prompt."""
        if not rows:
            return rows
        model, tokenizer = self._load()
        context = getattr(model.config, "max_position_embeddings", None) or getattr(
            model.config.get_text_config(), "max_position_embeddings", None
        )
        if not context:
            return rows
        budget = context - self.teacher.generation.max_new_tokens
        kept = []
        for row in rows:
            length = len(
                tokenizer(render_prompt(self.teacher, tokenizer, row["messages"]), add_special_tokens=False)[
                    "input_ids"
                ]
            )
            if length <= budget:
                kept.append(row)
                continue
            error = (
                f"prompt too long: {length} tokens + max_new_tokens {self.teacher.generation.max_new_tokens} "
                f"exceed the teacher's context of {context}; shorten the prompt or lower max_new_tokens"
            )
            self.stats.add_failure(error)
            record = {
                "prompt_id": row["prompt_id"],
                "response": None,
                "finish_reason": None,
                "num_tokens": 0,
                "num_prompt_tokens": length,
                "error": error,
            }
            self.checkpoint.write([record])
            records[row["prompt_id"]] = record
        return kept

    def generate_rows(self, rows: list[dict]) -> list[dict]:
        records: dict[str, dict] = {}
        todo = self._refuse_too_long(rows, records)
        for start in range(0, len(todo), self.teacher.batch_size):
            fresh = self._generate(todo[start : start + self.teacher.batch_size])
            self.checkpoint.write(fresh)
            records.update({record["prompt_id"]: record for record in fresh})
        return list(records.values())


def generate_locally(
    dataset: Dataset,
    teacher: TeacherConfig,
    *,
    checkpoint: GenerationCheckpoint,
    stats: GenerationStats,
    seed: int = 42,
) -> Dataset:
    """Generate with a transformers model in this process, longest prompts first.

    Reads `prompt_id`, `messages`; adds `teacher`, `response`, `finish_reason`, `num_tokens`,
    `num_prompt_tokens`, `error`. Rows already in `checkpoint` are reused, not regenerated.
    """
    generator = LocalGenerator(teacher, checkpoint, stats, seed)
    lengths = [sum(len(m["content"]) for m in messages) for messages in dataset["messages"]]
    ordered = dataset.add_column("_order", list(range(len(dataset)))).add_column("_length", lengths)
    ordered = ordered.sort("_length", reverse=True)
    try:
        generated = ordered.map(
            generator,
            batched=True,
            batch_size=max(teacher.batch_size, 1),  # one generation batch per map batch: a live progress bar
            desc=f"Generating with {teacher.name}",
            load_from_cache_file=False,
            new_fingerprint=run_fingerprint(),
        )
    finally:
        generator.release()
    return generated.sort("_order").remove_columns(["_order", "_length"]).flatten_indices()
