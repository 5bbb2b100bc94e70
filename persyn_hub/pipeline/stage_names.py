"""The names of PerSyn's stages and of the side files they write beside their data sets."""

from __future__ import annotations

PROMPTS = "prompts"
LEARNABILITY, QUALITY, COMBINE = "learnability", "quality", "combine"
ROUTER, ROUTE, ASSEMBLE = "router", "route", "assemble"
STATS_FILE = "stats.json"
ASSEMBLY_FILE = "assembly.json"
FALLBACK_FILE = "fallback.json"
PROMPTS_FILE = "prompts.json"


def label_generate(name: str) -> str:
    return f"label-generate/{name}"


def routed_generate(name: str) -> str:
    return f"generate/{name}"
