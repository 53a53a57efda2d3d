"""The ``minimal-pairs`` evaluator: a compositional probe (in the spirit of ARO and Winoground, but exact):
each image's true captions against generated captions that differ minimally and are false of it."""

from __future__ import annotations

import numbers
import re
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from harness import hookimpl
from harness.components import EvalContext, Evaluator, TokenFeatures
from harness.data import Split
from harness_plugins.datasets.shapes_relevance import CaptionMeaning, caption_relevance, parse_caption
from harness_plugins.datasets.shapes_scenes import COLORS, SHAPES, SIZES, _noun_phrase

KINDS = ("swap_objects", "swap_colors", "swap_shapes", "change_size", "replace_object")
METRICS = (*KINDS, "overall")
SCENE_EXTRAS = ("obj_color", "obj_shape", "obj_size")  # plus "relations" or "obj_bbox"

# one noun phrase of the shapes grammar: article, optional size, colour, shape
_NP = re.compile(rf"\ban? (?:({'|'.join(SIZES)}) )?({'|'.join(COLORS)}) ({'|'.join(SHAPES)})\b")
_IMAGE_CHUNK = 64  # images whose candidates are checked in one caption_relevance call
_SCORE_BLOCK_PAIRS = 1 << 18  # image x text scores computed at a time (non-cosine methods)
_GATHER_CHUNK = 1 << 16  # pairs per cosine gather


@dataclass(frozen=True)
class MinimalPair:
    """Image ``image`` (index in the split), one of its true captions (text ``text`` of the split), and
    a caption of kind ``kind`` (one of :data:`KINDS`) that differs from it minimally and is false of
    the image."""

    image: int
    text: int
    kind: str
    true_caption: str
    false_caption: str


def normalize_caption(caption: str) -> str:
    """The form :func:`parse_caption` reads: lower case, single spaces, no final full stop."""
    return " ".join(caption.lower().split()).removesuffix(".").rstrip()


def noun_phrase_spans(caption: str) -> list[tuple[int, int]]:
    """Character spans of the noun phrases of a (normalized) caption, in order."""
    return [m.span() for m in _NP.finditer(caption)]


def render(caption: str, objects: Sequence[tuple[int, int, int]],
           spans: Sequence[tuple[int, int]] | None = None) -> str:
    """``caption`` (normalized) with its noun phrases, in order, re-rendered from ``objects``
    (``(color, shape, size)`` indices, size -1 = not said) with the generator's noun-phrase template;
    everything around them (prefix, joiners, relation phrase) is kept word for word."""
    spans = noun_phrase_spans(caption) if spans is None else spans
    if len(spans) != len(objects):
        raise ValueError(f"{caption!r} has {len(spans)} noun phrases, not {len(objects)}")
    out, end = [], 0
    for (start, stop), (c, s, z) in zip(spans, objects):
        out += [caption[end:start], _noun_phrase(COLORS[c], SHAPES[s], SIZES[z] if z >= 0 else None)]
        end = stop
    return "".join(out) + caption[end:]


def _edits(caption: str, meaning: CaptionMeaning, kind: str, present: set[tuple[int, int]],
           spans: Sequence[tuple[int, int]]) -> list[tuple[tuple[int, int, int], ...]]:
    """The edited object lists behind :func:`edit_candidates` (rendered only when needed)."""
    objects = meaning.objects
    n = len(objects)

    def edited(changes: Mapping[int, tuple[int, int, int]]) -> tuple[tuple[int, int, int], ...]:
        return tuple(changes.get(i, o) for i, o in enumerate(objects))

    out = []
    if kind == "swap_objects":
        if meaning.relation >= 0 and n == 2:
            out.append(edited({0: objects[1], 1: objects[0]}))
    elif kind in ("swap_colors", "swap_shapes"):
        attr = 0 if kind == "swap_colors" else 1
        words = Counter(caption.split())
        for a in range(n):
            for b in range(a + 1, n):
                if objects[a][attr] == objects[b][attr]:
                    continue
                new_a, new_b = list(objects[a]), list(objects[b])
                new_a[attr], new_b[attr] = objects[b][attr], objects[a][attr]
                new = edited({a: tuple(new_a), b: tuple(new_b)})
                if Counter(render(caption, new, spans).split()) == words:
                    out.append(new)
    elif kind == "change_size":
        out += [edited({a: (c, s, len(SIZES) - 1 - z)}) for a, (c, s, z) in enumerate(objects) if z >= 0]
    elif kind == "replace_object":
        absent = [(c, s) for c in range(len(COLORS)) for s in range(len(SHAPES)) if (c, s) not in present]
        out += [edited({a: (c, s, z)}) for a, (_, _, z) in enumerate(objects) for c, s in absent]
    else:
        raise ValueError(f"unknown minimal-pair kind {kind!r}; kinds: {', '.join(KINDS)}")
    return out


def edit_candidates(caption: str, kind: str, present: set[tuple[int, int]]) -> list[str]:
    """Every edit of kind ``kind`` of ``caption`` (a caption of the shapes grammar), normalized, in a
    fixed order, before the truth check. ``present`` holds the image's ``(color, shape)`` combinations
    (for ``replace_object``).

    - ``swap_objects``: a relation caption's two noun phrases exchanged ("A left of B" → "B left of A").
    - ``swap_colors`` / ``swap_shapes``: the colours / shapes of two mentioned objects that differ in it
      exchanged; an exchange that would change the caption's words (the article of a noun phrase
      without a size switching between "a" and "an") is left out, so these kinds, like
      ``swap_objects``, keep the exact multiset of words.
    - ``change_size``: one stated size flipped (small ↔ large). A size is never added or removed:
      removing one leaves the caption true, adding one would change its length.
    - ``replace_object``: one mentioned object's colour and shape replaced by a combination absent from
      the image (its stated size, if any, kept).
    """
    meaning = parse_caption(caption)
    norm = normalize_caption(caption)
    spans = noun_phrase_spans(norm)
    return [render(norm, objects, spans) for objects in _edits(norm, meaning, kind, present, spans)]


def check_scene_extras(extras: Mapping[str, Any], where: str = "the dataset") -> None:
    """A clear ``ValueError`` unless ``extras`` hold the scene annotations the probe needs."""
    missing = [k for k in SCENE_EXTRAS if k not in extras]
    if "relations" not in extras and "obj_bbox" not in extras:
        missing.append("relations (or obj_bbox)")
    if missing:
        raise ValueError(f"minimal-pairs needs a dataset with scene annotations (per-image "
                         f"{', '.join(SCENE_EXTRAS)} and relations or obj_bbox extras, as shapes has); "
                         f"{where} lacks {', '.join(missing)}")


def generate_pairs(texts: Sequence[str], text_to_image: Any, extras: Mapping[str, Any], *, seed: int = 0,
                   captions: str = "all") -> list[MinimalPair]:
    """The probe's pairs for a split (``texts``, ``text_to_image``, scene ``extras``), images in index
    order, each image's true captions in text order, kinds in :data:`KINDS` order.

    True captions: every caption of the image (``captions="all"``) or its first one (``"first"``), kept
    only when true of the image (``caption_relevance``). For each true caption and kind, one false
    caption: the candidates of :func:`edit_candidates` in an order shuffled by a generator seeded with
    ``(seed, image index)`` (so the pairs do not depend on the run, the other images or the split's
    size), the first one that is false of the image (``caption_relevance`` on the image's own
    annotations); none when every candidate is true or there is none.
    """
    if captions not in ("all", "first"):
        raise ValueError(f"captions must be 'all' or 'first', got {captions!r}")
    check_scene_extras(extras)
    t2i = np.asarray(text_to_image, dtype=np.int64)
    n_images = len(np.asarray(extras["obj_color"]))
    keys = [k for k in (*SCENE_EXTRAS, "n_objects", "relations", "obj_bbox") if k in extras]
    scene = {k: np.asarray(extras[k]) for k in keys}
    order = np.argsort(t2i, kind="stable")
    bounds = np.searchsorted(t2i[order], np.arange(n_images + 1))
    color, shape = scene["obj_color"], scene["obj_shape"]
    n_objects = scene.get("n_objects")

    pairs: list[MinimalPair] = []
    for c0 in range(0, n_images, _IMAGE_CHUNK):
        images = range(c0, min(c0 + _IMAGE_CHUNK, n_images))
        local = {k: v[c0:c0 + len(images)] for k, v in scene.items()}
        # per image: its true captions, and per (caption, kind) the shuffled candidate list
        todo = []  # (image, true caption, kind, its normalized form, its noun-phrase spans, edits, text)
        trues = []  # (image, caption)
        for i in images:
            own = order[bounds[i]:bounds[i + 1]]
            if captions == "first":
                own = own[:1]
            if not len(own):
                continue
            rng = np.random.default_rng([seed, i])
            slots = range(color.shape[1] if n_objects is None else int(n_objects[i]))
            present = {(int(color[i, m]), int(shape[i, m])) for m in slots
                       if color[i, m] >= 0 and shape[i, m] >= 0}
            for j in own:
                text = texts[j]
                if not isinstance(text, str):
                    raise ValueError(f"minimal-pairs needs caption texts; text {j} is {type(text).__name__}")
                try:
                    meaning = parse_caption(text)
                except ValueError as err:
                    raise ValueError(f"minimal-pairs needs captions of the shapes grammar: {err}") from None
                norm = normalize_caption(text)
                spans = noun_phrase_spans(norm)
                trues.append((i, text))
                for kind in KINDS:
                    edits = _edits(norm, meaning, kind, present, spans)
                    shuffled = [edits[k] for k in rng.permutation(len(edits))]
                    todo.append((i, text, kind, norm, spans, shuffled, int(j)))
        if not trues:
            continue
        # the true captions, then the first untried candidate of each (caption, kind), until resolved
        truth = caption_relevance([t for _, t in trues], local)
        ok = {(i, t) for k, (i, t) in enumerate(trues) if truth[k, i - c0]}
        chosen: dict[int, str] = {}
        tried = [0] * len(todo)
        open_ = [k for k, item in enumerate(todo) if (item[0], item[1]) in ok and item[5]]
        while open_:
            texts_now = [render(todo[k][3], todo[k][5][tried[k]], todo[k][4]) for k in open_]
            truth = caption_relevance(texts_now, local)
            still = []
            for row, k in enumerate(open_):
                if not truth[row, todo[k][0] - c0]:
                    chosen[k] = texts_now[row]
                else:
                    tried[k] += 1
                    if tried[k] < len(todo[k][5]):
                        still.append(k)
            open_ = still
        pairs += [MinimalPair(image=todo[k][0], text=todo[k][6], kind=todo[k][2], true_caption=todo[k][1],
                              false_caption=chosen[k]) for k in sorted(chosen)]
    return pairs


def pair_accuracy(true_scores: Any, false_scores: Any, kinds: Sequence[str]) -> dict[str, float]:
    """Per kind and ``overall`` (all pairs pooled): the percentage of pairs whose true caption scores
    strictly above the false one, a tie counting one half: 100 · (#{t > f} + ½ #{t = f}) / #pairs (a NaN
    score counts as a loss); a kind without pairs is left out. Plus ``n_<kind>`` and ``n_overall``, the
    numbers of pairs (as floats; 0 for a kind without pairs)."""
    t = np.asarray(true_scores, dtype=np.float64).reshape(-1)
    f = np.asarray(false_scores, dtype=np.float64).reshape(-1)
    kinds = np.asarray(kinds, dtype=object).reshape(-1)
    if not len(t) == len(f) == len(kinds):
        raise ValueError(f"need one true score, one false score and one kind per pair; got "
                         f"{len(t)}, {len(f)} and {len(kinds)}")
    credit = (t > f) + 0.5 * (t == f)
    out: dict[str, float] = {}
    counts: dict[str, float] = {}
    for kind in METRICS:
        mask = np.ones(len(t), dtype=bool) if kind == "overall" else kinds == kind
        counts[f"n_{kind}"] = float(mask.sum())
        if mask.any():
            out[kind] = 100.0 * float(credit[mask].mean())
    return out | counts


def _unique_rows(emb: Any) -> tuple[Any, torch.Tensor]:
    """``(rows, inverse)``: the distinct embeddings (pooled rows or token features with their mask) and,
    for each input row, the index of its distinct row; identical embeddings are scored once, so that
    captions a model cannot tell apart get exactly the same score."""
    if isinstance(emb, TokenFeatures):
        valid = emb.valid
        key = torch.cat([(emb.features * valid[..., None]).flatten(1).float(), valid.float()], dim=1)
    else:
        key = emb.flatten(1)
    _, inverse = torch.unique(key, dim=0, return_inverse=True)
    n = int(inverse.max()) + 1 if len(inverse) else 0
    first = torch.full((n,), len(inverse), dtype=torch.long, device=inverse.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(inverse), device=inverse.device), reduce="amin")
    return emb[first], inverse


def _pair_scores(context: EvalContext, image_emb: Any, text_emb: Any, img: np.ndarray,
                 txt: np.ndarray) -> np.ndarray:
    """The method's score of each pair (image row ``img[p]``, text row ``txt[p]``)."""
    out = np.empty(len(img), dtype=np.float64)
    if context.cosine_scores(image_emb, text_emb):  # pooled cosine model: only the needed cosines
        a = F.normalize(image_emb.double(), dim=-1)
        b = F.normalize(text_emb.double(), dim=-1)
        for p0 in range(0, len(img), _GATHER_CHUNK):
            i = torch.as_tensor(img[p0:p0 + _GATHER_CHUNK], device=a.device)
            j = torch.as_tensor(txt[p0:p0 + _GATHER_CHUNK], device=b.device)
            out[p0:p0 + len(i)] = (a[i] * b[j]).sum(-1).cpu().numpy()
        return out
    # the method's own scores: blocks of whole images against the texts those images need
    order = np.argsort(img, kind="stable")
    image_bounds = np.flatnonzero(np.diff(img[order], prepend=-1, append=-1) != 0)  # starts + end
    b0 = 0
    while b0 < len(image_bounds) - 1:
        b1 = b0 + 1  # at least one image per block
        while (b1 < len(image_bounds) - 1 and (b1 + 1 - b0) * len(np.unique(
                txt[order[image_bounds[b0]:image_bounds[b1 + 1]]])) <= _SCORE_BLOCK_PAIRS):
            b1 += 1
        block = order[image_bounds[b0]:image_bounds[b1]]
        rows, inv_i = np.unique(img[block], return_inverse=True)
        cols, inv_t = np.unique(txt[block], return_inverse=True)
        scores = context.scores(_rows(image_emb, rows), _rows(text_emb, cols))
        out[block] = torch.as_tensor(scores).double().cpu().numpy()[inv_i, inv_t]
        b0 = b1
    return out


def _rows(emb: Any, index: np.ndarray) -> Any:
    device = emb.features.device if isinstance(emb, TokenFeatures) else emb.device
    return emb[torch.as_tensor(index, dtype=torch.long, device=device)]


_PAIRS: dict[tuple[int, int, str], tuple[weakref.ref, list[MinimalPair]]] = {}


class MinimalPairs(Evaluator):
    """Compositional minimal pairs on a dataset with scene annotations (``shapes``): for each image, each
    of its true captions (``captions: all``, the default, or only its first one: ``first``) against, per
    kind, one generated caption that differs from it minimally and is false of the image (checked
    exactly with ``caption_relevance``; candidates that happen to be true are skipped, see
    :func:`generate_pairs` and :func:`edit_candidates`). Generated captions re-render the true caption's
    noun phrases with the generator's template, keeping its prefix, joiners and relation phrase, so the
    text encoders see only known words.

    Kinds, which are also the metric names: ``swap_objects`` (subject and object exchanged around the
    relation), ``swap_colors`` and ``swap_shapes`` (of two mentioned objects), ``change_size`` (a stated
    size flipped), ``replace_object`` (an object replaced by a colour–shape absent from the image), and
    ``overall`` (every pair pooled). Each is 100 · (#{s(I, T) > s(I, F)} + ½ #{s(I, T) = s(I, F)}) / #pairs
    with ``s`` the method's own pair score (the cosine of pooled embeddings, or its ``score``), T the
    true and F the false caption: a tie counts one half, chance is 50. ``swap_objects``,
    ``swap_colors`` and ``swap_shapes`` keep the exact words, so a bag-of-words model ties on every such
    pair and scores exactly 50 (captions with identical embeddings are scored once). ``n_<kind>`` and
    ``n_overall`` report the number of pairs; a kind without pairs is left out (its count is 0).

    The pairs depend only on the split and ``seed`` (with the image index; not the run's seed).
    """

    units = {kind: "%" for kind in METRICS}

    def __init__(self, seed: int = 0, captions: str = "all"):
        if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        if captions not in ("all", "first"):
            raise ValueError(f"captions must be 'all' or 'first', got {captions!r}")
        self.seed, self.captions = int(seed), captions

    def metric_names(self) -> list[str]:
        return [*METRICS, *(f"n_{kind}" for kind in METRICS)]

    def check_split(self, split: Split) -> None:
        check_scene_extras(split.extras, f"split {split.name!r}")

    def pairs(self, context: EvalContext) -> list[MinimalPair]:
        split = context.split
        check_scene_extras(split.extras, f"dataset {context.dataset_info.name!r} split {split.name!r}")
        # the pairs depend only on the split and the settings: made once per split object in a process
        # (datasets cache their splits, so every method of a benchmark shares them)
        key = (id(split), self.seed, self.captions)
        cached = _PAIRS.get(key)
        if cached is None or cached[0]() is not split:
            cached = (weakref.ref(split), generate_pairs(split.texts, split.text_to_image, split.extras,
                                                         seed=self.seed, captions=self.captions))
            _PAIRS[key] = cached
        return cached[1]

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        pairs = self.pairs(context)
        if not pairs:
            return pair_accuracy([], [], [])
        images = np.unique([p.image for p in pairs])
        image_row = {int(i): r for r, i in enumerate(images)}
        texts = list(dict.fromkeys(t for p in pairs for t in (p.true_caption, p.false_caption)))
        text_row = {t: r for r, t in enumerate(texts)}
        image_emb = _rows(context.embed_images(), images)  # shared with the other evaluators
        text_emb, text_of = _unique_rows(context.model.embed_texts(texts))
        text_of = text_of.cpu().numpy()
        img = np.array([image_row[p.image] for p in pairs], dtype=np.int64)
        true_txt = text_of[[text_row[p.true_caption] for p in pairs]]
        false_txt = text_of[[text_row[p.false_caption] for p in pairs]]
        # every distinct (image, text) pair scored once
        both = np.unique(np.stack([np.concatenate([img, img]), np.concatenate([true_txt, false_txt])], 1),
                         axis=0, return_inverse=True)
        distinct, inverse = both[0], both[1].reshape(-1)
        scores = _pair_scores(context, image_emb, text_emb, distinct[:, 0], distinct[:, 1])[inverse]
        return pair_accuracy(scores[:len(pairs)], scores[len(pairs):], [p.kind for p in pairs])

    def chance(self, context: EvalContext) -> dict[str, float]:
        """A scorer that orders the two captions of a pair at random (or ties them): 50 for every kind."""
        return {kind: 50.0 for kind in METRICS}


@hookimpl
def register_evaluators(register):
    register("minimal-pairs", MinimalPairs)
