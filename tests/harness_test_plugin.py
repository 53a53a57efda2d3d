"""Components used only by the test suite: a tiny learnable dataset, misbehaving losses, a
closed-form estimator, a counting sampler, a probe evaluator and a lifecycle recorder."""

from __future__ import annotations

import time

import numpy as np
import torch

from harness import hookimpl
from harness.components import Evaluator, Sampler
from harness.data import Dataset, DatasetInfo, Split

WORDS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
EVENTS: list[tuple] = []


class ToyPairs(Dataset):
    """Tiny image-caption pairs: each class has its own colour pattern and its own word."""

    def __init__(self, size: int = 64, classes: int = 8, image_size: int = 8, seed: int = 0):
        self.size, self.classes, self.image_size, self.seed = size, classes, image_size, seed
        self.info = DatasetInfo(name="toy", image_shape=(3, image_size, image_size),
                                vocab=WORDS[:classes] + ["a", "picture", "of"],
                                class_names=WORDS[:classes])

    def split(self, name: str) -> Split:
        rng = np.random.default_rng([self.seed, ("train", "val", "test").index(name)])
        n = self.size if name == "train" else max(8, self.size // 4)
        labels = rng.integers(0, self.classes, n)
        palette = np.random.default_rng(99).integers(0, 256, (self.classes, 3, 1, 1))
        noise = rng.integers(0, 40, (n, 3, self.image_size, self.image_size))
        images = np.clip(palette[labels] + noise, 0, 255).astype(np.uint8)
        texts = [f"a picture of {WORDS[c]}" for c in labels] + [WORDS[c] for c in labels]
        return Split(name, torch.from_numpy(images), texts, np.concatenate([np.arange(n)] * 2),
                     extras={"labels": labels})


class NaNLoss(torch.nn.Module):
    """Returns NaN from step ``after`` on (to test divergence handling)."""

    def __init__(self, after: int = 1):
        super().__init__()
        self.after, self.calls = after, 0

    def forward(self, image_emb, text_emb):
        self.calls += 1
        loss = (image_emb - text_emb).pow(2).mean()
        return loss * float("nan") if self.calls > self.after else loss


class ExplodingLoss(torch.nn.Module):
    """Raises on the first call (to test that one method's bug does not stop a benchmark)."""

    def forward(self, image_emb, text_emb):
        raise RuntimeError("boom from ExplodingLoss")


class SlowLoss(torch.nn.Module):
    """Mean squared distance, slowed down so a test can kill the process mid-run."""

    def __init__(self, delay: float = 0.05):
        super().__init__()
        self.delay = delay

    def forward(self, image_emb, text_emb):
        time.sleep(self.delay)
        return (image_emb - text_emb).pow(2).mean()


class LabelledLoss(torch.nn.Module):
    """Records the extras it is given: ``labels`` from the split, ``label_emb`` from class names and
    the prepared ``images`` / ``texts`` of the batch."""

    seen: list = []

    def forward(self, image_emb, text_emb, labels, label_emb, images, texts):
        LabelledLoss.seen.append((labels.shape, label_emb.shape, images.shape, texts["tokens"].shape[0]))
        return (image_emb - text_emb).pow(2).mean() + 0 * label_emb.sum()


class RecordingLoss(torch.nn.Module):
    """Mean squared distance; each call appends ("loss_call", torch threads, batch size, a hash of the
    batch's caption tokens) to EVENTS, between the lifecycle hooks' own events."""

    def forward(self, image_emb, text_emb, texts):
        tokens = texts["tokens"].cpu().numpy().tobytes()
        EVENTS.append(("loss_call", torch.get_num_threads(), image_emb.shape[0], hash(tokens)))
        return (image_emb - text_emb).pow(2).mean()


class LeastSquares:
    """Closed-form toy: maps X onto the Y feature space by ridge least squares."""

    def __init__(self, ridge: float = 1e-3):
        self.ridge = ridge

    def fit(self, X, Y):
        self.mx, self.my = X.mean(0), Y.mean(0)
        Xc, Yc = X - self.mx, Y - self.my
        self.W = np.linalg.solve(Xc.T @ Xc + self.ridge * np.eye(X.shape[1]), Xc.T @ Yc)
        return self

    def transform(self, X, Y):
        return (X - self.mx) @ self.W, Y - self.my

    def correlations(self, X, Y):
        U, V = self.transform(X, Y)
        return np.array([np.corrcoef(U[:, i], V[:, i])[0, 1] for i in range(U.shape[1])])


class CountingSampler(Sampler):
    """In-batch negatives, counting setup / steps (to test the sampler hooks)."""

    def __init__(self):
        self.setups, self.steps = 0, 0

    def setup(self, model, loss):
        self.setups += 1

    def after_step(self, model, batch, image_emb, text_emb):
        self.steps += 1
        EVENTS.append(("sampler_step", self.steps))


class EmbeddingNorm(Evaluator):
    """Mean L2 norm of the test image embeddings (lower is better, for direction tests)."""

    lower_is_better = frozenset({"norm"})

    def evaluate(self, context):
        image_emb, _ = context.embed()
        return {"norm": float(image_emb.norm(dim=1).mean())}


@hookimpl
def register_datasets(register):
    register("toy", ToyPairs)


@hookimpl
def register_losses(register):
    register("nan-loss", NaNLoss)
    register("exploding", ExplodingLoss)
    register("slow-mse", SlowLoss)
    register("labelled", LabelledLoss)
    register("recorder", RecordingLoss)


@hookimpl
def register_estimators(register):
    register("lstsq", LeastSquares)


@hookimpl
def register_samplers(register):
    register("counting", CountingSampler)


@hookimpl
def register_evaluators(register):
    register("embedding-norm", EmbeddingNorm)


@hookimpl
def register_encoders(register):
    pass  # encoders come from the bundled plugin; this keeps the hook exercised by a second plugin


@hookimpl
def on_benchmark_start(benchmark, jobs):
    EVENTS.append(("benchmark_start", benchmark.name, len(jobs)))


@hookimpl
def on_run_start(job):
    EVENTS.append(("run_start", job.name, job.seed))


@hookimpl
def on_epoch_end(job, epoch, logs):
    EVENTS.append(("epoch_end", job.name, epoch, logs["loss"]))


@hookimpl
def on_run_end(job, result):
    EVENTS.append(("run_end", job.name, result.status))


@hookimpl
def on_benchmark_end(benchmark, results):
    EVENTS.append(("benchmark_end", benchmark.name, len(results)))
