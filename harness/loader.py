"""DataLoader glue: training batches and evaluation chunks read through ``torch.utils.data.DataLoader``.

Training draws every random choice of an epoch (the image order, one caption per image, one transform
seed per batch) in the main process, from the run's own streams, and writes them into an
:class:`EpochPlan` in shared memory; the workers only *execute* the plan (decode, transforms, the
encoders' ``prepare``). So the batches and their transforms are the same whatever ``train.workers`` is,
and persistent workers see each new epoch's plan without being restarted.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from harness.data import Split
from harness.sources import LazySource

#: ``train.workers: auto`` starts at most this many data workers (when the data is read from files)
MAX_AUTO_WORKERS = 8
#: batches each worker prepares ahead of the training step
PREFETCH_FACTOR = 2


def streams(items: Any) -> bool:
    """Whether ``items`` (a split, or a split's images) are read on demand rather than held in memory."""
    if isinstance(items, Split):
        return isinstance(items.images, LazySource) or any(
            isinstance(value, LazySource) for value in items.extras.values())
    return isinstance(items, LazySource)


def resolve_workers(setting: int | str, items: Any) -> int:
    """The number of data workers for ``train.workers``: an integer as given (0 = in this process);
    ``auto`` = none for data already in memory (slicing an array is faster than shipping it between
    processes), else one per CPU thread this run may use, at most :data:`MAX_AUTO_WORKERS`."""
    if setting != "auto":
        return int(setting)
    if not streams(items):
        return 0
    return max(1, min(MAX_AUTO_WORKERS, torch.get_num_threads()))


#: glibc's mallopt parameter for the size from which malloc maps blocks of their own (malloc.h)
M_MMAP_THRESHOLD = -3


def _worker_init(_: int) -> None:
    """In each data worker, have glibc's malloc serve blocks of 1 MiB and more from their own mappings,
    returned to the system when freed. By default it raises that threshold after the first such block is
    freed; then the batch-sized float temporaries of ``prepare`` come from the heap, which fragments and
    grew by about a batch per batch (a worker reached 1 GB in one epoch of 20,000 images)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 1 << 20)
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def data_loader(dataset: torch.utils.data.Dataset, workers: int, device: torch.device, *,
                persistent: bool = False) -> DataLoader:
    """A DataLoader over a dataset whose items are whole batches (no collation), in order: pinned
    memory on CUDA, ``workers`` processes prefetching :data:`PREFETCH_FACTOR` batches each."""
    return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=persistent and workers > 0,
                      prefetch_factor=PREFETCH_FACTOR if workers else None, worker_init_fn=_worker_init,
                      # a private generator: starting an epoch never draws from torch's global stream,
                      # which the model's initialisation and dropout use
                      generator=torch.Generator())


@contextlib.contextmanager
def _gc_frozen(forks: bool) -> Iterator[None]:
    """While workers fork: every object of this process moved to the collector's permanent generation,
    so the workers' garbage collector never writes to the pages they share with this process (each write
    would copy a page: copy-on-write growing the workers towards this process's whole heap)."""
    if not forks:
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()  # this process collects as before; the forked workers keep them frozen


class EpochPlan:
    """One epoch's batches in shared memory: ``index[step]`` the images, ``captions[step]`` their
    captions, ``seeds[step]`` the batch's transform seed (-1: no transforms)."""

    def __init__(self, steps: int, batch_size: int):
        self.index = torch.zeros(steps, batch_size, dtype=torch.long).share_memory_()
        self.captions = torch.zeros(steps, batch_size, dtype=torch.long).share_memory_()
        self.seeds = torch.full((steps,), -1, dtype=torch.long).share_memory_()

    def fill(self, index: Sequence[np.ndarray], captions: Sequence[np.ndarray],
             seeds: Sequence[int | None]) -> None:
        for step, (rows, texts, seed) in enumerate(zip(index, captions, seeds)):
            self.index[step] = torch.as_tensor(rows)
            self.captions[step] = torch.as_tensor(texts)
            self.seeds[step] = -1 if seed is None else seed

    def step(self, step: int) -> tuple[np.ndarray, np.ndarray, int | None]:
        seed = int(self.seeds[step])
        return self.index[step].numpy(), self.captions[step].numpy(), None if seed < 0 else seed


class _PlannedBatches(torch.utils.data.Dataset):
    """Item ``step`` = ``load(index, captions, seed)`` of that step of the current plan."""

    def __init__(self, plan: EpochPlan, load: Callable[[np.ndarray, np.ndarray, int | None], Any]):
        self.plan, self.load = plan, load

    def __len__(self) -> int:
        return len(self.plan.seeds)

    def __getitem__(self, step: int) -> Any:
        return self.load(*self.plan.step(step))


class TrainBatches:
    """The training batches of one stage: ``epoch(index, captions, seeds)`` yields each step's loaded
    batch, in order, read by ``workers`` persistent processes (or this one when 0)."""

    def __init__(self, load: Callable[[np.ndarray, np.ndarray, int | None], Any], steps: int,
                 batch_size: int, workers: int, device: torch.device):
        self.plan = EpochPlan(steps, batch_size)
        self.loader: DataLoader | None = data_loader(_PlannedBatches(self.plan, load), workers, device,
                                                     persistent=True)
        self._iterator: Any = None

    def epoch(self, index: Sequence[np.ndarray], captions: Sequence[np.ndarray],
              seeds: Sequence[int | None]):
        self.plan.fill(index, captions, seeds)  # before iter(): workers prefetch as soon as it starts
        with _gc_frozen(self.loader.num_workers > 0 and self._iterator is None):  # the first iter() forks
            self._iterator = iter(self.loader)
        return self._iterator

    def close(self) -> None:
        """Stop the workers now, even in the middle of an epoch (a diverged run), rather than whenever the
        collector frees the loader."""
        shutdown = getattr(self._iterator, "_shutdown_workers", None)  # DataLoader's own clean-up
        if shutdown is not None:
            shutdown()
        self.loader = self._iterator = None


class _Chunks(torch.utils.data.Dataset):
    """Item k = ``prepare`` of items ``[k·size, (k+1)·size)``."""

    def __init__(self, items: Any, prepare: Callable[[Any], Any], size: int):
        self.items, self.prepare, self.size = items, prepare, size

    def __len__(self) -> int:
        return math.ceil(len(self.items) / self.size)

    def __getitem__(self, k: int) -> Any:
        from harness.model import take

        index = np.arange(k * self.size, min((k + 1) * self.size, len(self.items)))
        return self.prepare(take(self.items, index))


def prepared_chunks(items: Any, prepare: Callable[[Any], Any], size: int, workers: int | str,
                    device: torch.device):
    """``prepare`` of consecutive chunks of ``items`` (evaluation), in order, through a DataLoader
    (``workers`` as in :func:`resolve_workers`)."""
    loader = data_loader(_Chunks(items, prepare, size), resolve_workers(workers, items), device)
    with _gc_frozen(loader.num_workers > 0):
        return iter(loader)
