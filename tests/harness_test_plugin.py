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


class QuadrantTokens(torch.nn.Module):
    """Image encoder with location features: the 4 quadrants' mean colours, projected ([B, 4, D])."""

    modality = "image"

    def __init__(self, embed_dim: int = 8):
        super().__init__()
        self.project = torch.nn.Linear(3, embed_dim)
        self.output_dim = embed_dim

    def prepare(self, raw):
        return torch.as_tensor(np.asarray(raw)).float() / 255.0

    def forward(self, images):
        from harness.components import TokenFeatures
        h, w = images.shape[-2] // 2, images.shape[-1] // 2
        quads = [images[..., :h, :w], images[..., :h, w:], images[..., h:, :w], images[..., h:, w:]]
        return TokenFeatures(self.project(torch.stack([q.mean((-1, -2)) for q in quads], 1)))


class WordTokens(torch.nn.Module):
    """Text encoder with token features: one embedding per word, padded, with a mask ([B, T, D])."""

    modality = "text"

    def __init__(self, embed_dim: int = 8, dataset_info=None):
        super().__init__()
        self.vocab = {w: i + 1 for i, w in enumerate(dataset_info.vocab)}
        self.embed = torch.nn.Embedding(len(self.vocab) + 1, embed_dim, padding_idx=0)
        self.output_dim = embed_dim

    def prepare(self, raw):
        ids = [[self.vocab.get(w, 0) for w in str(t).split()] for t in raw]
        out = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
        for i, row in enumerate(ids):
            out[i, :len(row)] = torch.tensor(row)
        return out

    def forward(self, tokens):
        from harness.components import TokenFeatures
        return TokenFeatures(self.embed(tokens), tokens != 0)


def max_mean_scores(image_feats, text_feats, text_mask):
    """Naive match-map score: for each token its best location, averaged over real tokens."""
    m = torch.einsum("ild,jtd->ijlt", image_feats, text_feats).amax(2)  # [Bi, Bt, T]
    mask = text_mask.float()
    return (m * mask).sum(-1) / mask.sum(-1)


class MaxMeanLoss(torch.nn.Module):
    """InfoNCE over the naive match-map score; records the masks it is given."""

    masks: list = []

    def forward(self, image_feats, text_feats, text_mask):
        MaxMeanLoss.masks.append(text_mask.shape)
        s = max_mean_scores(image_feats, text_feats, text_mask)
        target = torch.arange(len(s))
        return 0.5 * (torch.nn.functional.cross_entropy(s, target)
                      + torch.nn.functional.cross_entropy(s.T, target))

    def pair_scores(self, image, text):
        return max_mean_scores(image.features, text.features, text.valid)


class TokenMSE(torch.nn.Module):
    """Squared distance of the mean token features; defines no pair score of its own."""

    def forward(self, image_feats, text_feats):
        return (image_feats.mean(1) - text_feats.mean(1)).pow(2).mean()


class HeadScaledMSE(torch.nn.Module):
    """Squared distance of the pairs times the method's ``scale`` head (a loss that uses a head)."""

    def forward(self, image_emb, text_emb, heads, model):
        assert heads is model.heads
        return heads["scale"].scale.abs() * (image_emb - text_emb).pow(2).mean() + \
            (heads["scale"].scale - 2.0).pow(2)


class HardExit(torch.nn.Module):
    """Ends its process at once, as a crash or the out-of-memory killer would (launcher tests only)."""

    def forward(self, image_emb, text_emb):
        import os
        os._exit(3)


class ScaleHead(torch.nn.Module):
    """A toy task head: one learnable scale."""

    def __init__(self, embed_dim: int = 8):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(()))


class LinearHead(torch.nn.Linear):
    """A toy head with randomly initialised weights (draws from torch's generator when built)."""

    def __init__(self, embed_dim: int = 8):
        super().__init__(embed_dim, embed_dim)


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
    register("max-mean", MaxMeanLoss)
    register("token-mse", TokenMSE)
    register("head-scaled", HeadScaledMSE)
    register("hard-exit", HardExit)


@hookimpl
def register_estimators(register):
    register("lstsq", LeastSquares)


@hookimpl
def register_samplers(register):
    register("counting", CountingSampler)


class EnvProbe(Evaluator):
    """Reports the number in $HARNESS_TEST_PROBE as seen by the process that ran the job (launchers)."""

    def evaluate(self, context):
        import os
        return {"probe": float(os.environ.get("HARNESS_TEST_PROBE", "0"))}


@hookimpl
def register_evaluators(register):
    register("embedding-norm", EmbeddingNorm)
    register("env-probe", EnvProbe)


#: batch sizes of every forward call of the `frozen-projection` encoder (feature cache tests)
FROZEN_CALLS: list[int] = []


class FrozenProjection(torch.nn.Module):
    """A fixed random projection of the pixels (a buffer, nothing trains): an encoder the feature cache
    may cache. ``weights``: a ``torch.save``d ``[pixels, embed_dim]`` tensor in place of the random one."""

    modality = "image"

    def __init__(self, embed_dim: int = 8, seed: int = 0, weights: str | None = None, dataset_info=None):
        super().__init__()
        d = int(np.prod(dataset_info.image_shape))
        weight = torch.load(weights, weights_only=True) if weights else \
            torch.randn(d, embed_dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("weight", weight)
        self.output_dim = weight.shape[1]

    def prepare(self, raw):
        return torch.as_tensor(np.asarray(raw)).float().flatten(1) / 255.0

    def forward(self, x):
        FROZEN_CALLS.append(len(x))
        return x @ self.weight


@hookimpl
def register_encoders(register):
    register("quadrant-tokens", QuadrantTokens)
    register("word-tokens", WordTokens)
    register("frozen-projection", FrozenProjection)


@hookimpl
def register_heads(register):
    register("scale-head", ScaleHead)
    register("linear-head", LinearHead)


#: (training mode of torch's grad, batch size) of every call of the `counting` transform
TRANSFORM_CALLS: list[tuple[bool, int]] = []


class CountingTransform(torch.nn.Module):
    """Records each call (to prove transforms run at training steps only) and adds uniform noise;
    ``delay`` seconds per call slow a run down so a test can kill it mid-run."""

    def __init__(self, noise: float = 0.0, delay: float = 0.0):
        super().__init__()
        self.noise, self.delay = noise, delay

    def forward(self, images):
        time.sleep(self.delay)
        TRANSFORM_CALLS.append((torch.is_grad_enabled(), images.shape[0]))
        return (images + self.noise * torch.rand_like(images)).clamp(0, 1)


@hookimpl
def register_transforms(register):
    register("counting", CountingTransform)


@hookimpl
def on_benchmark_start(benchmark, jobs):
    EVENTS.append(("benchmark_start", benchmark.name, len(jobs)))


@hookimpl
def on_run_start(job):
    EVENTS.append(("run_start", job.name, job.seed))


#: (method, epoch) after which on_epoch_end interrupts the run, as Ctrl-C would (resume tests)
INTERRUPT_AFTER: tuple[str, int] | None = None


@hookimpl
def on_step_end(job, step, logs):
    EVENTS.append(("step_end", job.name, step, logs["loss"], logs["epoch"]))


@hookimpl
def on_epoch_end(job, epoch, logs):
    EVENTS.append(("epoch_end", job.name, epoch, logs["loss"]))
    if INTERRUPT_AFTER == (job.name, epoch):
        raise KeyboardInterrupt


@hookimpl
def on_run_end(job, result):
    EVENTS.append(("run_end", job.name, result.status))


@hookimpl
def on_benchmark_end(benchmark, results):
    EVENTS.append(("benchmark_end", benchmark.name, len(results)))


class LastFirst:
    """A third-party launcher: the tasks one after another in this process, last first (``log`` records
    the order, for the tests)."""

    log: list[int] = []

    def __init__(self, note: str = ""):
        self.note = note

    def launch(self, tasks, run_here):
        for task in reversed(tasks):
            LastFirst.log.append(task.index)
            yield task, run_here(task)


@hookimpl
def register_launchers(register):
    register("last-first", LastFirst)
