"""Checkpoints: atomic, pickle-free files of tensors and plain containers; every random stream a
resumed run must continue; and the mid-run checkpoints of one job (``train.checkpoint_every``)."""

from __future__ import annotations

import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.distributed import all_gather, rank, world_size


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Atomic ``torch.save`` (temp file + fsync + rename) of tensors and plain containers only; under DDP
    only rank 0 writes."""
    if rank() != 0:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling code (``weights_only=True``)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def rng_state(streams: dict[str, Any]) -> dict[str, Any]:
    """Every random stream a resumed run must continue: the batch-order (torch generator), caption and
    transform (numpy generators) streams, and the global python, numpy, torch and CUDA generators (torch
    and CUDA per rank, as plain tensors and numbers that load with ``weights_only``)."""
    key = np.random.get_state(legacy=False)
    state = {"streams": {name: gen.get_state() if isinstance(gen, torch.Generator) else gen.bit_generator.state
                         for name, gen in streams.items()},
             "python": random.getstate(),
             "numpy": {**key, "state": {"key": torch.from_numpy(key["state"]["key"].astype(np.int64)),
                                        "pos": key["state"]["pos"]}},
             "world_size": world_size()}
    mine = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        mine = torch.cat([mine, torch.cuda.get_rng_state()])
    state["torch"] = all_gather(mine[None])  # [ranks, bytes]
    return state


def set_rng_state(state: dict[str, Any], streams: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (each rank its own torch stream when the number of ranks is
    unchanged, else rank 0's)."""
    for name, gen in streams.items():
        if isinstance(gen, torch.Generator):
            gen.set_state(state["streams"][name])
        else:
            gen.bit_generator.state = state["streams"][name]
    random.setstate(state["python"])
    key = state["numpy"]
    np.random.set_state({**key, "state": {"key": key["state"]["key"].numpy().astype(np.uint32),
                                          "pos": key["state"]["pos"]}})
    mine = state["torch"][rank() if state["world_size"] == world_size() else 0]
    n = len(torch.get_rng_state())
    torch.set_rng_state(mine[:n].clone())
    if len(mine) > n and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine[n:].clone())


@dataclass
class Resume:
    """Mid-run checkpoints of one job: every ``every`` epochs (0: never) the whole training state is
    written atomically to ``path``; a later run of the same job (``key``: its configuration and seed)
    continues from the last one instead of starting over. A file of another configuration is ignored."""

    path: Path
    key: str
    every: int = 0

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            state = load_checkpoint(self.path)
        except Exception as exc:  # unreadable (another torch, a foreign file): start over
            print(f"warning: ignoring unreadable checkpoint {self.path}: {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            return None
        return state if state.get("key") == self.key else None

    def save(self, state: dict[str, Any]) -> None:
        save_checkpoint(self.path, {"key": self.key, **state})
