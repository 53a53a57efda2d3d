"""Plots of a trained model, from a run's result file and its checkpoint (``seed-<n>.pt``, written with
``train.checkpoint: true``):

- ``embedding-map``: a 2-D PCA of the word embeddings (colours, shapes, sizes, relation words — each
  word embedded alone) and of image embeddings of the same space, the images drawn as thumbnails
  (in the manner of Kiros et al. 2015, Figure 5); each modality is centred on its own mean first, so
  the offset between the two clouds does not take the first component;
- ``retrieval``: for a few test images, the image and its top-5 captions with the true ones marked;
  for a few test captions, the top-5 images with the true ones framed (in the manner of Podguzova &
  Nguyen 2020, Figures 8–10).

The model is rebuilt from the result's resolved config on the dataset it records (its fingerprint must
match) and loaded without unpickling code (``weights_only``).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from harness.errors import HarnessError
from harness.results import RunResult, read_result

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: plot kind -> caption; files are written as ``seed-<n>.<kind>.png`` beside the result
MODEL_PLOTS = {
    "embedding-map": "Embedding map: 2-D PCA of word embeddings (colour, shape, size and relation "
                     "words) and image embeddings of the same space",
    "retrieval": "Retrieval examples on the test split: top-5 captions of a few images (✓ true) and "
                 "top-5 images of a few captions (green frame: true)",
}
EXAMPLES = 3  # images and captions shown in the retrieval examples
TOP = 5
MAP_IMAGES = 24  # images placed on the embedding map
WORD_STYLE = {"color": ("o", "#d62728"), "shape": ("s", "#1f77b4"), "size": ("D", "#2ca02c"),
              "relation": ("^", "#9467bd")}
TRUE, OTHER = "#1a9641", "#555555"


class ModelPlotError(HarnessError):
    """A run whose model cannot be drawn (no checkpoint, a closed-form method, a changed dataset)."""


@dataclass
class TrainedRun:
    result: RunResult
    model: Any  # harness.model.DualEncoder with the checkpoint's weights
    dataset: Any


def load_trained(result_path: str | Path) -> TrainedRun:
    """Rebuild a run's model from its result file and load its checkpoint."""
    from harness.config import MethodSpec
    from harness.jobs import _build, build_encoder, get_dataset
    from harness.model import DualEncoder
    from harness.registry import PluginImportError, load_plugins
    from harness.training import load_checkpoint

    path = Path(result_path)
    try:
        result = read_result(path)
    except (OSError, ValueError) as exc:
        raise ModelPlotError(f"{path}: not a readable result file: {str(exc).splitlines()[0]}") from None
    checkpoint = path.with_suffix(".pt")
    if result.status != "ok":
        raise ModelPlotError(f"{path}: the run {result.status}; there is no trained model to draw")
    if not checkpoint.is_file():
        raise ModelPlotError(f"{path}: no checkpoint {checkpoint.name} beside it (rerun with "
                             f"--set defaults.train.checkpoint=true to keep the trained weights)")
    if result.dataset is None:
        raise ModelPlotError(f"{path}: the result records no dataset")
    modules = [*result.plugins, *(p.module for p in result.providers or [] if p.module and not p.distribution)]
    try:
        registry = load_plugins(dict.fromkeys(modules))
        spec = MethodSpec.model_validate(result.config)
        dataset, fingerprint = get_dataset({"name": result.dataset.name, **result.dataset.params}, registry)
        if fingerprint != result.dataset.fingerprint:
            raise ModelPlotError(f"{path}: dataset {result.dataset.name!r} differs from the one the run "
                                 f"used (fingerprint {fingerprint[:12]}, not {result.dataset.fingerprint[:12]})")
        context = {"embed_dim": spec.embed_dim, "dataset_info": dataset.info}
        model = DualEncoder(build_encoder(registry, spec.encoders.image, {**context, "modality": "image"}),
                            build_encoder(registry, spec.encoders.text, {**context, "modality": "text"}),
                            batch_size=spec.train.eval_batch_size)
        for key, comp in spec.heads.items():
            model.heads[key] = _build(registry, "head", comp, context)
        state = load_checkpoint(checkpoint)
        model.load_state_dict(state["model"])
        for stage in spec.stage_list():  # the last stage whose loss defines pair scores gives the score
            loss = _build(registry, "loss", stage.loss, context)
            if hasattr(loss, "pair_scores"):
                stored = state["stages"][stage.name] if "stages" in state else state
                loss.load_state_dict(stored["loss"])
                model.scorer = loss.pair_scores
    except ModelPlotError:
        raise
    except (HarnessError, PluginImportError) as exc:
        raise ModelPlotError(f"{path}: cannot rebuild the model: {exc}") from None
    except Exception as exc:  # a checkpoint that does not fit the config, a missing weights file
        raise ModelPlotError(f"{path}: cannot rebuild the model: {type(exc).__name__}: {exc}") from None
    model.eval()
    return TrainedRun(result, model, dataset)


def draw_model_plots(result_path: str | Path, *, progress: bool = False) -> dict[str, Figure]:
    """The figures of :data:`MODEL_PLOTS` the run's dataset allows (words need a vocabulary with
    word categories; retrieval examples need images and captions), by kind."""
    from tqdm.auto import tqdm

    with tqdm(total=3, desc=Path(result_path).stem, unit="step", leave=False, disable=not progress) as bar:
        run = load_trained(result_path)
        bar.update(1)
        split = run.dataset.split("test")
        if len(run.dataset.info.image_shape) != 3 or run.dataset.info.text_kind != "caption":
            raise ModelPlotError(f"{result_path}: dataset {run.result.dataset.name!r} has no images "
                                 f"with captions to draw")
        figures: dict[str, Figure] = {}
        words = _content_words(run.dataset.info)
        if words:
            figures["embedding-map"] = embedding_map(run, split, words)
        bar.update(1)
        figures["retrieval"] = retrieval_examples(run, split)
        bar.update(1)
    return figures


def write_model_plots(result_path: str | Path, *, progress: bool = False) -> list[Path]:
    """Draw the model plots of one run and write them beside its result: ``seed-<n>.<kind>.png``."""
    path = Path(result_path)
    written = []
    for kind, figure in draw_model_plots(path, progress=progress).items():
        target = path.with_name(f"{path.stem}.{kind}.png")
        figure.savefig(target, dpi=110)
        written.append(target)
    return written


# --- the embedding map ------------------------------------------------------------------------------

def _content_words(info) -> dict[str, str]:
    """Word -> category for the words that name something visual (not function words)."""
    return {w: c for w, c in info.word_categories.items() if c in WORD_STYLE}


def _pooled(value: Any) -> np.ndarray:
    """Unit vectors, one per item (token / location features pooled by their masked mean)."""
    from harness.components import TokenFeatures
    from harness.metrics import masked_mean
    if isinstance(value, TokenFeatures):
        value = masked_mean(value.features.float(), value.mask)
    x = torch.as_tensor(value).detach().cpu().double()
    return torch.nn.functional.normalize(x, dim=-1).numpy()


def _image(split, i: int) -> np.ndarray:
    """Image ``i`` as an ``[H, W, C]`` array for imshow."""
    image = np.asarray(split.images[i])
    image = np.transpose(image, (1, 2, 0)) if image.ndim == 3 else image
    return image if image.dtype == np.uint8 else np.clip(image, 0, 1)


def embedding_map(run: TrainedRun, split, words: dict[str, str]) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    names = list(words)
    rng = np.random.default_rng(run.result.seed)
    single = np.flatnonzero(np.asarray(split.extras["n_objects"]) == 1) if "n_objects" in split.extras \
        else np.arange(len(split))
    pool = single if len(single) >= 4 else np.arange(len(split))
    chosen = np.sort(rng.choice(pool, size=min(MAP_IMAGES, len(pool)), replace=False))
    word_vectors = _pooled(run.model.embed_texts(names))
    image_vectors = _pooled(run.model.embed_images(_take(split.images, chosen)))
    # each modality centred on its own mean: the constant offset between words and images (the
    # "modality gap") would otherwise be the first component and pile all images in one spot
    points, explained = _pca_2d(np.concatenate([word_vectors - word_vectors.mean(axis=0),
                                                image_vectors - image_vectors.mean(axis=0)]))
    word_xy, image_xy = points[:len(names)], points[len(names):]

    fig = Figure(figsize=(8.5, 7.2), layout="constrained")
    ax = fig.subplots()
    for (x, y), i in zip(image_xy, chosen):
        box = OffsetImage(_image(split, int(i)), zoom=0.42)
        ax.add_artist(AnnotationBbox(box, (x, y), frameon=True, pad=0.1,
                                     bboxprops={"edgecolor": "0.7", "linewidth": 0.5}))
    for category, (marker, colour) in WORD_STYLE.items():
        members = [k for k, w in enumerate(names) if words[w] == category]
        if not members:
            continue
        ax.scatter(word_xy[members, 0], word_xy[members, 1], marker=marker, color=colour, s=28,
                   label=f"{category} words", zorder=3)
        for k in members:
            ax.annotate(names[k], word_xy[k], xytext=(4, 3), textcoords="offset points", fontsize=8,
                        color=colour, zorder=4)
    ax.scatter(image_xy[:, 0], image_xy[:, 1], s=0)  # so the images set the limits too
    ax.margins(0.08)
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of the variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%})")
    ax.legend(loc="best", fontsize=7, title=f"{len(chosen)} test images as thumbnails", title_fontsize=7)
    ax.set_title(f"{run.result.benchmark} · {run.result.method} · seed {run.result.seed}: words and "
                 f"images in the learned space\n(PCA of unit vectors, each modality centred on its mean)", fontsize=9)
    ax.grid(alpha=0.2)
    return fig


def _pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first two principal components of ``x`` and their shares of the variance."""
    centred = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    variance = s ** 2 / max((s ** 2).sum(), 1e-12)
    components = vt[:2] if vt.shape[0] >= 2 else np.vstack([vt, np.zeros_like(vt)])
    return centred @ components.T, np.pad(variance[:2], (0, max(0, 2 - len(variance))))


def _take(items: Any, index: np.ndarray) -> Any:
    from harness.model import take
    return take(items, index)


# --- retrieval examples -----------------------------------------------------------------------------

def _truth(run: TrainedRun, split) -> Any:
    """``[n_texts, n_images]`` booleans: which images each caption is true of (every image a caption
    is exactly true of where the dataset knows it, else the caption's own image)."""
    relevance = getattr(run.dataset, "relevance", lambda _: None)("test")
    if relevance is not None:
        return relevance.toarray() if hasattr(relevance, "toarray") else np.asarray(relevance, bool)
    truth = np.zeros((len(split.texts), len(split)), bool)
    truth[np.arange(len(split.texts)), split.text_to_image] = True
    return truth


def retrieval_examples(run: TrainedRun, split) -> Figure:
    from matplotlib.figure import Figure

    scores = run.model.score(run.model.embed_images(split.images),
                             run.model.embed_texts(split.texts)).cpu().numpy()
    truth = _truth(run, split)
    rng = np.random.default_rng([run.result.seed, 1])
    images = rng.choice(len(split), size=min(EXAMPLES, len(split)), replace=False)
    captions = rng.choice(len(split.texts), size=min(EXAMPLES, len(split.texts)), replace=False)

    fig = Figure(figsize=(11, 2.1 * (len(images) + len(captions)) + 0.6), layout="constrained")
    fig.suptitle(f"{run.result.benchmark} · {run.result.method} · seed {run.result.seed}: retrieval on "
                 f"the test split ({len(split)} images, {len(split.texts)} captions)", fontsize=10)
    top, bottom = fig.subfigures(2, 1, height_ratios=[len(images), len(captions)])
    top.suptitle("image → captions (✓ true of the image)", fontsize=9, x=0.02, ha="left")
    for part, i in zip(top.subfigures(len(images), 1), images):
        _image_row(part, split, int(i), scores[int(i)], truth[:, int(i)])
    bottom.suptitle("caption → images (green frame: the caption is true of it)", fontsize=9,
                    x=0.02, ha="left")
    for part, j in zip(bottom.subfigures(len(captions), 1), captions):
        _caption_row(part, split, int(j), scores[:, int(j)], truth[int(j)])
    return fig


def _rank_of_first(order: np.ndarray, relevant: np.ndarray) -> int | None:
    hits = np.flatnonzero(relevant[order])
    return int(hits[0]) + 1 if len(hits) else None


def _image_row(part, split, i: int, scores: np.ndarray, relevant: np.ndarray) -> None:
    axes = part.subplots(1, 2, width_ratios=[1, 5])
    axes[0].imshow(_image(split, i))
    axes[0].set_axis_off()
    order = np.argsort(-scores, kind="stable")
    first = _rank_of_first(order, relevant)
    axes[1].set_axis_off()
    lines = [(f"{rank}. {'✓' if relevant[j] else '✗'} {_short(split.texts[j])}  ({scores[j]:.2f})",
              TRUE if relevant[j] else OTHER) for rank, j in enumerate(order[:TOP], start=1)]
    note = f"image {i}: first true caption at rank {first}" if first else f"image {i}: no true caption"
    axes[1].text(0, 1, note, fontsize=8, fontweight="bold", va="top", transform=axes[1].transAxes)
    for k, (text, colour) in enumerate(lines, start=1):
        axes[1].text(0, 1 - 0.17 * k, text, fontsize=8, color=colour, va="top",
                     transform=axes[1].transAxes)


def _caption_row(part, split, j: int, scores: np.ndarray, relevant: np.ndarray) -> None:
    order = np.argsort(-scores, kind="stable")
    first = _rank_of_first(order, relevant)
    where = f"first true image at rank {first}" if first else "true of no test image"
    part.suptitle(f"“{_short(split.texts[j], 90)}” — {where}", fontsize=8, x=0.02, ha="left")
    for rank, (ax, i) in enumerate(zip(part.subplots(1, TOP), order[:TOP]), start=1):
        ax.imshow(_image(split, int(i)))
        ax.set_xticks([])
        ax.set_yticks([])
        colour = TRUE if relevant[i] else "0.8"
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3 if relevant[i] else 1)
        ax.set_title(f"{rank}. ({scores[i]:.2f})", fontsize=7, color=TRUE if relevant[i] else OTHER)


def _short(text: str, width: int = 70) -> str:
    return textwrap.shorten(str(text), width=width, placeholder="…")


def write_model_plots_in(directory: str | Path, *, progress: bool = False,
                         warn=lambda message: None) -> list[Path]:
    """The model plots of every ``ok`` run under ``directory`` that kept a checkpoint, with a progress
    bar over the runs; a run that cannot be drawn is warned about and skipped."""
    from tqdm.auto import tqdm

    runs = [p for p in sorted(Path(directory).rglob("seed-*.json")) if p.with_suffix(".pt").is_file()]
    written = []
    for path in tqdm(runs, desc="model plots", unit="run", disable=not progress or not runs):
        try:
            written += write_model_plots(path)
        except ModelPlotError as exc:
            warn(str(exc))
    return written
