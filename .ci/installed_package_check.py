"""Run from a folder outside the checkout, against the installed wheel: validate, router save/load, cards.

python .ci/installed_package_check.py /path/to/checkout
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

checkout = Path(sys.argv[1]).resolve()

import persyn_hub  # noqa: E402

installed = Path(persyn_hub.__file__).resolve()
assert installed.parent != checkout / "persyn_hub", f"persyn_hub imported from the source tree ({installed})"

result = subprocess.run(
    [
        sys.executable,
        "-m",
        "persyn_hub.cli",
        "validate",
        str(checkout / "recipes/demo/task-mix-smollm2.yaml"),
    ],
    capture_output=True,
    text=True,
)
assert result.returncode == 0, result.stderr
print("persyn validate: ok")

from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

from persyn_hub.bundled import resolve_model  # noqa: E402
from persyn_hub.router import RouterInfo, load_router, save_router, score_texts  # noqa: E402

minilm = resolve_model("bundled:minilm-l6-v2")
config = AutoConfig.from_pretrained(
    minilm, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=2,
    id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1},
)  # fmt: skip
config.persyn = RouterInfo(teachers=["a", "b"], max_length=32).config_entry()
router = AutoModelForSequenceClassification.from_config(config)
tokenizer = AutoTokenizer.from_pretrained(minilm)
with tempfile.TemporaryDirectory() as folder:
    save_router(router, tokenizer, Path(folder), {})  # renders the model card from the packaged template
    assert "PerSyn router" in (Path(folder) / "README.md").read_text()
    loaded, loaded_tokenizer = load_router(folder, expected_teachers=["a", "b"])
    same = AutoModelForSequenceClassification.from_pretrained(folder)  # transformers alone, no remote code
    texts = ["What is 2 + 3?", "Spell cat backward."]
    assert (score_texts(texts, loaded, loaded_tokenizer) == score_texts(texts, router, tokenizer)).all()
    assert type(same).__name__ == "BertForSequenceClassification"
print("router save / load: ok")

from persyn_hub.model_cards import template_path  # noqa: E402

for card in ("router_card.md", "dataset_card.md", "labels_card.md", "stages_card.md"):
    assert template_path(card).is_file(), f"card template {card} not shipped in the wheel"
from persyn_hub.router.metrics import routing_metrics_module_path  # noqa: E402

assert (routing_metrics_module_path() / "routing_metrics.py").is_file()
from persyn_hub.eval_tasks import TASKS_DIR  # noqa: E402

assert (TASKS_DIR / "persyn_taskmix.yaml").is_file()
print("packaged templates, eval tasks, metric module: ok")
