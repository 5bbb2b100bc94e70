"""Learnability from a served student (TGI prompt-token details, vLLM prompt_logprobs): NOT YET IMPLEMENTED.

Planned: TGI `/generate` with `details=True, decoder_input_details=True, max_new_tokens=1` returns
`details.prefill[i].logprob` (the log-prob of prompt token i given tokens < i); vLLM `/v1/completions`
with `prompt_logprobs` returns the same per prompt token. The text sent must be the student's chat
rendering of prompt + response (see `learnability.tokenize_for_student`), and the response tokens are
located by token count, checked token by token against the local tokenizer. llama.cpp's `echo` +
`logprobs` scores each token one position late (upstream bug) and must not be used uncorrected.
"""

from __future__ import annotations

from datasets import Dataset

from persyn_hub.config import StudentConfig


def score_learnability_served(dataset: Dataset, student: StudentConfig) -> Dataset:
    """Refuse clearly instead of returning wrong numbers: served scoring is not implemented yet."""
    raise NotImplementedError(
        f"student.endpoint={student.endpoint!r}: scoring learnability through a served student (TGI/vLLM) "
        "is not implemented yet. Unset student.endpoint to score in-process with transformers (the model "
        f"{student.model!r} is loaded locally), or under `accelerate launch` to spread it over devices."
    )
