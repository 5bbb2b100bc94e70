"""Which GPUs a process's teacher engine may use, so that under a launch no two engines share a GPU.

A launch (`accelerate launch`, `torchrun`, one agent per node under Slurm) starts `LOCAL_WORLD_SIZE`
processes per node, numbered by `LOCAL_RANK`. The node's GPUs are `CUDA_VISIBLE_DEVICES` when it is set
(Slurm and the launchers set it; the same list for every process of the node), else every GPU torch
sees.

- A transformers teacher runs in every process, on the process's own GPU (`dtypes.local_device`:
  `cuda:LOCAL_RANK`). More processes than GPUs would load several copies on one GPU: that is warned.
- A vLLM teacher with `tensor_parallel_size: t` runs ONE engine per group of t GPUs of a node: the
  process with local rank `g*t` leads group g over `GPUs[g*t:(g+1)*t]` and generates; the other
  processes run no engine for that teacher (fewer generating processes, each with t GPUs). Groups
  never span nodes (tensor parallelism needs the GPUs' own links) and never share a GPU (a vLLM
  engine claims most of its GPUs' memory). Without a launch, the one process runs one engine on the
  first t GPUs.

The engine is given its group by making only those GPUs visible before it starts (see
`vllm_backend.engine_environment`): vLLM starts its engine core and workers as subprocesses that take
the GPUs in `CUDA_VISIBLE_DEVICES`, the way its own data-parallel launcher places engines. vLLM's
`external_launcher` executor is the other way to run under torchrun; it is not used because every rank
of an engine must then create it together and feed it the same prompts in lockstep, a collective wait
across ranks that the runner avoids (ranks claim chunks of a stage independently).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from persyn_hub.errors import PersynError
from persyn_hub.recipe.sections import TeacherConfig

logger = logging.getLogger(__name__)

LAUNCH_VARIABLES = (
    "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
)  # fmt: skip
"""What launchers set to tell a process it is one of several (hidden from an engine's own processes and
from the router's single-process training)."""

ENGINE_PORT_BASE = 30000
"""Local rank 0's first engine port when `VLLM_PORT` is unset: below Linux's ephemeral range (32768-60999),
so no outgoing connection of the node holds it by chance."""
ENGINE_PORT_STRIDE = 100
"""Ports between the engines of two local ranks. From `VLLM_PORT` up, vLLM probes for the first free
port (a port is probed free, released, then bound later by its distributed store) and takes a few more
(5 for a data-parallel master list, a 10-port reserved range): 100 leaves room for all of them, and for
ports still held by the previous stage's engine, without reaching the next rank's."""

_logged: set[tuple[str, ...]] = set()


class PlacementError(PersynError, RuntimeError):
    """A teacher's engine does not fit the GPUs of this node; the message names the field and the fix."""


def node_devices() -> list[str]:
    """The GPUs of this node as `CUDA_VISIBLE_DEVICES` names them (indices or UUIDs), in order.

    Kept as the launcher wrote them because a child's `CUDA_VISIBLE_DEVICES` is read against the
    physical GPUs, not against the parent's visible list. As CUDA does, the list ends at the first
    empty or negative entry (`-1` hides every GPU).
    """
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        import torch

        return [str(index) for index in range(torch.cuda.device_count())]
    devices = []
    for entry in (part.strip() for part in listed.split(",")):
        if not entry or entry.startswith("-"):
            break
        devices.append(entry)
    return devices


def local_process() -> tuple[int, int]:
    """(`LOCAL_RANK`, `LOCAL_WORLD_SIZE`) of this process; (0, 1) without a launch."""
    return int(os.environ.get("LOCAL_RANK", "0")), int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


def engine_group(
    devices: Sequence[str], local_rank: int, tensor_parallel_size: int, *, field: str
) -> tuple[str, ...] | None:
    """The GPUs of the vLLM engine the process with `local_rank` leads, or None when it leads none.

    An empty tuple: no GPU is visible and `tensor_parallel_size` is 1, so every process may run its
    own engine without a GPU (vLLM's CPU build); nothing is restricted. `field` names the setting in
    errors (`teachers[0] ('qwen').tensor_parallel_size`).
    Example: `engine_group(["0", "1", "2", "3"], 2, 2, field=...)` -> `("2", "3")`.
    """
    size = tensor_parallel_size
    if size < 1:
        raise PlacementError(f"{field}: {size} is not a number of GPUs; use 1 or more.")
    if not devices:
        if size > 1:
            raise PlacementError(
                f"{field}: {size} GPUs per engine, but no GPU is visible to this process "
                f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); run on a GPU node "
                "or set it to 1."
            )
        return ()
    if size > len(devices):
        raise PlacementError(
            f"{field}: {size} GPUs per engine, but this node has {len(devices)} "
            f"({','.join(devices)}); lower it to at most {len(devices)} (an engine spans GPUs of one node)."
        )
    group, offset = divmod(local_rank, size)
    if offset or group >= len(devices) // size:
        return None
    return tuple(devices[group * size : (group + 1) * size])


def engine_port() -> int:
    """The first port this process's vLLM engine may take (its `VLLM_PORT`): the node's base plus
    `LOCAL_RANK x ENGINE_PORT_STRIDE`, so the engines that a launch starts at the same moment on one node
    never probe the same free port (the race behind EADDRINUSE). The base is `VLLM_PORT` when it is set:
    every process of a launch inherits the same value, so it cannot be one engine's own port; without a
    launch (local rank 0) it is used as it is.
    """
    local_rank, _ = local_process()
    listed = os.environ.get("VLLM_PORT", "").strip()
    if listed and not listed.isdigit():
        raise PlacementError(f"VLLM_PORT={listed!r} is not a port number; unset it or set a number.")
    port = (int(listed) if listed else ENGINE_PORT_BASE) + local_rank * ENGINE_PORT_STRIDE
    if not 0 < port <= 65535 - ENGINE_PORT_STRIDE:
        raise PlacementError(
            f"VLLM_PORT: local rank {local_rank}'s engine would start at port {port}, beyond the last port "
            f"(65535, less {ENGINE_PORT_STRIDE} for its own ports); set a lower VLLM_PORT."
        )
    _log_once(("port", str(port)), f"local rank {local_rank}'s vLLM engine takes ports from {port}")
    return port


def _field(teacher: TeacherConfig, index: int | None) -> str:
    where = f"teachers[{index}]" if index is not None else "teachers"
    return f"{where} ({teacher.name!r}).tensor_parallel_size"


def leads_engine_group(teacher: TeacherConfig, index: int | None = None) -> bool:
    """Whether this process leads an engine group of `teacher` (so generates for it); logs once when
    not. `backends.generates_here` asks it for engine-group (vLLM) teachers."""
    if _vllm_group(teacher, index) is not None:
        return True
    _log_once(
        ("idle", teacher.name),
        f"local rank {local_process()[0]} runs no vLLM engine for teacher {teacher.name!r} "
        f"({teacher.tensor_parallel_size} GPU(s) per engine, {len(node_devices())} on this node): "
        "the group leaders generate its rows",
    )
    return False


def engine_devices(teacher: TeacherConfig, index: int | None = None) -> list[str] | None:
    """The GPUs this process's vLLM engine for `teacher` may see, to set before it starts; None when
    no GPU is visible (nothing to restrict).

    Raises `PlacementError` when this process leads no engine group for the teacher: the caller
    should have asked `backends.generates_here` first, and two engines on one GPU would fail later and less
    clearly (out of memory).
    """
    group = _vllm_group(teacher, index)
    if group is None:
        local_rank, _ = local_process()
        size = teacher.tensor_parallel_size
        raise PlacementError(
            f"{_field(teacher, index)}: local rank {local_rank} leads no engine ({size} GPU(s) per engine: "
            f"local ranks 0, {size}, ... lead, one per group that fits the node's "
            f"{len(node_devices())} GPU(s)); ask `generates_here` before generating."
        )
    if not group:
        return None
    _log_once(
        ("engine", teacher.name, *group),
        f"vLLM engine of teacher {teacher.name!r} (rank {os.environ.get('RANK', '0')}, local rank "
        f"{local_process()[0]}) gets GPU(s) "
        f"{','.join(group)} (tensor_parallel_size {teacher.tensor_parallel_size})",
    )
    return list(group)


def check_engine_group(teacher: TeacherConfig, index: int | None = None) -> None:
    """`teacher`'s engine groups fit this node's GPUs; else `PlacementError` naming
    `teachers[index].tensor_parallel_size` and the fix (`backends.check_placements` checks every one)."""
    _vllm_group(teacher, index)


def _vllm_group(teacher: TeacherConfig, index: int | None) -> tuple[str, ...] | None:
    local_rank, _ = local_process()
    return engine_group(
        node_devices(), local_rank, teacher.tensor_parallel_size, field=_field(teacher, index)
    )


def warn_if_gpus_are_shared(teacher: TeacherConfig) -> None:
    """Warn (once) when more processes than GPUs would load `teacher` on this node."""
    devices = node_devices()
    _, processes = local_process()
    if devices and processes > len(devices):
        _log_once(
            ("shared", teacher.name),
            f"{processes} processes share this node's {len(devices)} GPU(s): teacher {teacher.name!r} is "
            f"loaded {processes} times on {len(devices)} GPU(s) (cuda:LOCAL_RANK % {len(devices)}); start at "
            "most one process per GPU (`--num_processes`).",
            level=logging.WARNING,
        )


def _log_once(key: tuple[str, ...], message: str, level: int = logging.INFO) -> None:
    if key not in _logged:
        _logged.add(key)
        logger.log(level, message)


__all__ = [
    "LAUNCH_VARIABLES",
    "PlacementError",
    "ENGINE_PORT_BASE",
    "ENGINE_PORT_STRIDE",
    "check_engine_group",
    "engine_devices",
    "engine_group",
    "engine_port",
    "leads_engine_group",
    "local_process",
    "node_devices",
    "warn_if_gpus_are_shared",
]
