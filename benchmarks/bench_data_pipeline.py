"""Target P8: throughput of the harness's image pipeline — read, decode, resize (shorter side 224),
centre-crop 224 and normalise JPEGs — against a bare ``torch.utils.data.DataLoader`` over the same files
with the same transforms, and how it scales with ``workers``.

    harness:    the training loader itself: ``harness.loader.TrainBatches`` over a split of
                ``harness.sources.ImageFiles``, batches planned per epoch and loaded by
                ``harness.training.load_batch`` in persistent workers, images prepared by the
                ``resnet`` encoder's own ``prepare`` (ImageNet normalisation); captions are passed
                through unchanged (no tokeniser), so both sides do the same image work;
    reference:  a map-style Dataset that opens each file with PIL, ``draft``s it (the same JPEG
                reduced-scale decode the harness uses), resizes and centre-crops with torchvision's v2
                functional ops, ``pil_to_tensor``; a DataLoader with ``batch_size``, the same workers,
                persistent workers and prefetching; normalisation in its collate function;
    plain:      the same reference without ``draft`` — the usual torchvision pipeline — for context.

Each epoch reads every image once (the first epoch of each loader warms its workers up and is not
timed); the sides alternate over the repeats and the best epoch of each is kept.

    python benchmarks/bench_data_pipeline.py                   # 768 images of 640x480, workers 0 1 2
    python benchmarks/bench_data_pipeline.py --workers 0 1 2 4 8 --images 2048
"""

from __future__ import annotations

import argparse
import functools
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import harness
from harness.data import Split
from harness.loader import TrainBatches
from harness.sources import ImageFiles, resized_size
from harness.training import load_batch


def make_jpegs(folder: Path, n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> list[str]:
    """``n`` photo-sized JPEGs (smooth random colour fields with fine noise, quality 90), made once."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            coarse = rng.integers(0, 256, (size[1] // 32, size[0] // 32, 3), dtype=np.uint8)
            image = Image.fromarray(coarse).resize(size, Image.BICUBIC)
            noise = rng.integers(-12, 13, (size[1], size[0], 3))
            pixels = np.clip(np.asarray(image, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


class Files(Dataset):
    """The reference: one image per item, decoded and cropped with PIL and torchvision's v2 ops."""

    def __init__(self, paths: list[str], size: int, draft: bool):
        self.paths, self.size, self.draft = paths, size, draft

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms.v2 import functional as F

        with Image.open(self.paths[i]) as image:
            if self.draft:
                image.draft(None, resized_size(*image.size, self.size))
            image = F.center_crop(F.resize(image.convert("RGB"), self.size), [self.size, self.size])
            return F.pil_to_tensor(image)


MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def normalise(items: list[torch.Tensor]) -> torch.Tensor:
    return (torch.stack(items).float() / 255.0 - MEAN) / STD


def harness_epochs(paths: list[str], size: int, batch: int, workers: int):
    """A callable that reads one epoch through the harness's training loader, and its closer."""
    split = Split("train", ImageFiles(paths, size), [f"caption {i}" for i in range(len(paths))],
                  np.arange(len(paths)))
    prepare = harness.create("encoder", "resnet", depth=18).prepare
    load = functools.partial(load_batch, split, prepare_images=prepare, prepare_texts=list)
    steps = len(paths) // batch
    batches = TrainBatches(load, steps, batch, workers, torch.device("cpu"))
    order = np.random.default_rng(0)

    def epoch() -> int:
        perm = order.permutation(len(paths))
        rows = [perm[s * batch:(s + 1) * batch] for s in range(steps)]
        n = 0
        for loaded in batches.epoch(rows, rows, [None] * steps):
            n += len(loaded["images"])
        return n

    return epoch, batches.close


def reference_epochs(paths: list[str], size: int, batch: int, workers: int, draft: bool):
    loader = DataLoader(Files(paths, size, draft), batch_size=batch, shuffle=True, drop_last=True,
                        num_workers=workers, persistent_workers=workers > 0,
                        prefetch_factor=2 if workers else None, collate_fn=normalise,
                        generator=torch.Generator().manual_seed(0))

    def epoch() -> int:
        return sum(len(b) for b in loader)

    return epoch, lambda: None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=768)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "harness-bench-p8"),
                    help="folder for the generated JPEGs (kept for reruns)")
    ap.add_argument("--no-plain", action="store_true", help="skip the reference without draft")
    args = ap.parse_args()

    torch.set_num_threads(1)  # the main process only collects batches; workers use one thread each
    paths = make_jpegs(Path(args.data), args.images)
    size_mb = sum(os.path.getsize(p) for p in paths) / 2**20
    print(f"{len(paths)} JPEGs of 640x480 ({size_mb:.0f} MB) -> {args.size} px, batch {args.batch}; torch "
          f"{torch.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| workers | harness (img/s) | reference, same decode (img/s) | harness / reference | plain torchvision "
          "(img/s) |")
    print("|---|---|---|---|---|")
    results = {}
    for workers in args.workers:
        sides = {"harness": harness_epochs(paths, args.size, args.batch, workers),
                 "reference": reference_epochs(paths, args.size, args.batch, workers, draft=True)}
        if not args.no_plain:
            sides["plain"] = reference_epochs(paths, args.size, args.batch, workers, draft=False)
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for name, (epoch, _) in sides.items():
            epoch()  # warm-up
        for _ in range(args.repeats):  # the sides alternate, so a busy moment hits all of them
            for name, (epoch, _) in sides.items():
                t0 = time.perf_counter()
                n = epoch()
                rates[name].append(n / (time.perf_counter() - t0))
        for _, close in sides.values():
            close()
        best = {name: max(r) for name, r in rates.items()}
        results[workers] = best
        plain = f"{best['plain']:.0f}" if "plain" in best else "—"
        print(f"| {workers} | {best['harness']:.0f} | {best['reference']:.0f} | "
              f"{best['harness'] / best['reference']:.2f}x | {plain} |", flush=True)
    base = results[min(results)]["harness"]
    print("scaling of the harness pipeline with workers (throughput / that at workers="
          f"{min(results)}): " + ", ".join(f"{w}: {r['harness'] / base:.2f}x" for w, r in results.items()))
    worst = min(r["harness"] / r["reference"] for r in results.values())
    print(f"worst harness / reference ratio: {worst:.2f}x (target >= 0.9x)")


if __name__ == "__main__":
    main()
