"""What one_gpu_check.py runs on, made without the network where it runs: the carried folder and the rows.

The carried folder (`python benchmarks/one_gpu_check.py --prepare-wheels DIR`, on a networked machine). The
lent machine's image has torch, transformers, accelerate, pyarrow and pandas but no datasets or evaluate, no
network, and one device call carries at most 64 MiB, the working tree included. So the folder holds:
  - the wheels of what the image lacks, in the versions this dev install has (`pip download --no-deps` for
    the image's Python on manylinux x86_64; never torch), and persyn_hub's own wheel (`pip wheel --no-deps`);
  - `smollm2-trimmed.gguf`: the bundled SmolLM2-135M GGUF (94 MB, too big) cut to its first `layers` blocks,
    every kept tensor and all metadata (tokenizer, chat template) copied byte for byte, only the block
    count changed;
and `prepare` stops with an error when the folder and the working tree exceed 64 MiB.

The rows (made where the check runs, from fixed seeds): a handful of prompts and answers, long worked
answers for the scorer's speed, and a labeled pool whose best teacher follows the prompt's topic.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from datasets import Dataset

from persyn_hub.bundled import bundled_gguf_path

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT = 64 * 2**20
"""What one device call may carry: the working tree plus carried paths (/work/.library/device/README.md)."""
MISSING_ON_DEVICE = ("datasets", "dill", "multiprocess", "evaluate", "gguf")
"""What the image lacks that the checks import; pyarrow, pandas, xxhash, fsspec, huggingface_hub are there."""
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
MODEL_FILE = "smollm2-trimmed.gguf"
CARRIED_LAYERS = 12
"""SmolLM2 blocks the carried model keeps (of 30): 55.8 MiB, leaving room for the wheels and the tree."""

ONE_WORD = {"role": "system", "content": "Answer in one word."}
HANDFUL = [
    ([{"role": "user", "content": "What is 17 + 25?"}], "17 + 25 = 42. The answer is 42."),
    ([{"role": "user", "content": "What is 17 + 25?"}], "Add the ones: 7 + 5 = 12, carry 1; then 4. So 42."),
    ([ONE_WORD, {"role": "user", "content": "Sky colour?"}], "Blue."),
    ([ONE_WORD, {"role": "user", "content": "Sky colour?"}], "Azure"),
    ([{"role": "user", "content": "Name a prime above 90."}], "97 is prime: nothing from 2 to 9 divides it."),
    ([{"role": "user", "content": "Name a prime above 90."}], "91"),
    ([{"role": "user", "content": "Say 'good morning' in French."}], "Bonjour."),
    (
        [{"role": "user", "content": "A haiku about rain?"}],
        "Soft rain on the roof\nthe garden drinks in silence",
    ),
]
"""(a) rows: prompts answered twice (the scorer's shared-prefix path) and once, a system turn, a newline."""
STEPS = (
    "We have {a} and {b}, so together that makes {s}.",
    "Taking {b} away from {a} leaves {d}, which we keep for the next step.",
    "Each of the {a} boxes holds {b} items, so there are {p} items in all.",
    "To check, {s} minus {b} gives back {a}, as expected.",
)
TEACHERS = ("math-tutor", "poet", "generalist")
TOPICS = ("the sea", "autumn", "a lighthouse", "old friends", "the city at night", "a cat", "winter", "hills")
ROUTER_PROMPTS = {
    "math": (
        "What is {a} plus {b}?",
        "Compute {a} times {b}.",
        "A farmer has {a} sheep and buys {b}. How many?",
    ),
    "writing": ("Write a short poem about {t}.", "Describe {t} in one sentence.", "Tell a story about {t}."),
}
REWARDS = {"math": (1.0, 0.1, 0.5), "writing": (0.1, 1.0, 0.5)}
"""Reward of each of TEACHERS by topic: the router must learn to send math to one, writing to another."""


def trim_gguf(source: Path, target: Path, layers: int) -> None:
    """Copy a GGUF keeping its first `layers` blocks; every kept tensor and all metadata byte for byte."""
    reader = gguf.GGUFReader(source)
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    block_count = gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)
    writer = gguf.GGUFWriter(target, arch)
    for item in reader.fields.values():
        if item.name == gguf.Keys.General.ARCHITECTURE or item.name.startswith("GGUF."):
            continue  # GGUFWriter writes these itself
        kind = item.types[0]
        sub_type = item.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        value = layers if item.name == block_count else item.contents()
        writer.add_key_value(item.name, value, kind, sub_type=sub_type)
    block = re.compile(r"blk\.(\d+)\.")
    kept = [t for t in reader.tensors if not (m := block.match(t.name)) or int(m.group(1)) < layers]
    for tensor in kept:
        data = tensor.data
        writer.add_tensor_info(tensor.name, data.shape, data.dtype, data.nbytes, tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for tensor in kept:
        writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
    writer.close()


def tree_bytes() -> int:
    """Bytes of the working tree a device call sends: tracked and untracked-not-ignored files."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    files = [ROOT / name for name in listed.split("\0") if name]
    return sum(path.stat().st_size for path in files if path.is_file())


def download_wheels(folder: Path, python_version: str) -> None:
    """`pip download --no-deps` of MISSING_ON_DEVICE for the image's Python, pinned to this install's versions
    (those the tests pass on), and `pip wheel --no-deps` of this checkout."""
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in MISSING_ON_DEVICE]
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(folder)]
    command += ["--python-version", python_version, "--implementation", "cp"]
    for name in PLATFORMS:
        command += ["--platform", name]
    subprocess.run([*command, *pins], check=True)
    wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(folder), str(ROOT)]
    subprocess.run(wheel, check=True)


def prepare(folder: Path, python_version: str, layers: int) -> None:
    """Write the carried folder (wheels and trimmed model), list it, and fail if a call could not carry it."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("*.whl"), folder / MODEL_FILE]:
        stale.unlink(missing_ok=True)  # two versions of one package stop `pip install --no-index`
    download_wheels(folder, python_version)
    trim_gguf(bundled_gguf_path("bundled:smollm2-135m-instruct"), folder / MODEL_FILE, layers)
    sizes = {path.name: path.stat().st_size for path in sorted(folder.iterdir()) if path.is_file()}
    for name, size in sizes.items():
        print(f"{size / 2**20:8.2f} MiB  {name}")
    total, tree = sum(sizes.values()), tree_bytes()
    print(
        f"{total / 2**20:8.2f} MiB  in {folder}; with the working tree ({tree / 2**20:.2f} MiB) "
        f"{(total + tree) / 2**20:.2f} MiB of the {CARRY_LIMIT // 2**20} MiB one device call carries"
    )
    if total + tree > CARRY_LIMIT:
        raise SystemExit(
            f"{folder} is too big for one device call: prepare it again with fewer --layers (now {layers})"
        )


# --------------------------------------------------------------------------------------------------
# The rows each check works on, made where it runs: nothing is read from the Hub or a data package


def worked_text(tokenizer: Any, rng: np.random.Generator, target: int) -> str:
    """Arithmetic steps of about `target` student tokens: a long teacher answer, the same for one seed."""
    parts, count = [], 0
    while count < target:
        a, b = (int(x) for x in rng.integers(10, 999, size=2))
        step = STEPS[int(rng.integers(len(STEPS)))].format(a=a, b=b, s=a + b, d=abs(a - b), p=a * b)
        parts.append(step)
        count += len(tokenizer(" " + step, add_special_tokens=False)["input_ids"])
    return " ".join(parts)


def long_pool(tokenizer: Any, prompts: int, teachers: int, lengths: tuple[int, int]) -> Dataset:
    """`prompts` x `teachers` rows, answer lengths drawn from `lengths` tokens: the scorer's usual work."""
    rows = []
    for p in range(prompts):
        question = f"A shop packs {p + 12} crates of {p + 7} jars and sells {p + 30} jars. Explain the stock."
        for k in range(teachers):
            rng = np.random.default_rng([p, k])
            answer = worked_text(tokenizer, rng, int(rng.integers(lengths[0], lengths[1] + 1)))
            rows.append(
                {"messages": [{"role": "user", "content": question}], "response": answer, "error": None}
            )
    return Dataset.from_list(rows)


def router_labels(count: int) -> Dataset:
    """A labeled pool (combine's columns) whose best teacher follows the prompt's topic, with a little noise."""
    rng, rows = np.random.default_rng(0), []
    for i in range(count):
        topic = ("math", "writing")[i % 2]
        template = ROUTER_PROMPTS[topic][int(rng.integers(3))]
        a, b = (int(x) for x in rng.integers(2, 500, size=2))
        prompt = template.format(a=a, b=b, t=TOPICS[int(rng.integers(len(TOPICS)))])
        for teacher, reward in zip(TEACHERS, REWARDS[topic]):
            noisy = reward + float(rng.normal(0, 0.05))
            rows.append(
                {
                    "prompt_id": f"p{i}",
                    "prompt": prompt,
                    "teacher": teacher,
                    "reward": noisy,
                    "excluded": None,
                }
            )
    return Dataset.from_list(rows)
