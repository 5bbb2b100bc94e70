"""Jinja templates of the cards persyn_hub writes (router model card, data set cards, the stages repo's card),
shipped in the wheel and rendered with `huggingface_hub`'s `ModelCard`/`DatasetCard.from_template`.

`template_path` finds them (`PERSYN_CARD_TEMPLATES` points at a folder of your own to restyle every card
without touching the code); `hub_endpoint` is the Hub the cards' links point at.
"""

from __future__ import annotations

import os
from pathlib import Path


def template_path(name: str) -> Path:
    """`$PERSYN_CARD_TEMPLATES/<name>` if set, else the packaged `<name>` (`persyn_hub/model_cards/`,
    shipped in the wheel as package data)."""
    folder = os.environ.get("PERSYN_CARD_TEMPLATES")
    if folder:
        return Path(folder) / name
    from importlib import resources

    return Path(str(resources.files(__name__) / name))


def hub_endpoint() -> str:
    """The Hub the cards' links point at (`HF_ENDPOINT`, the public Hub by default)."""
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


__all__ = ["hub_endpoint", "template_path"]
