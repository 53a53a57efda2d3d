"""The harness contract: every extension point a plugin can implement, in one file.

A plugin is a module (or object) with functions marked ``@harness.hookimpl`` whose names match the
specs below. Bundled methods (``harness_plugins``) and third-party packages register the same way: an
entry point in group ``"harness"`` naming the module, or ``harness --plugin MODULE`` on the command line.

Registration hooks receive a ``register(name, factory)`` callback, so one plugin can register many
components. ``factory`` is a class or function; its keyword parameters are the component's parameters
as written in the benchmark YAML (``{name: infonce, temperature: 0.07}``), checked against its signature
before anything trains. The first line of the factory's docstring is the one-line description that
``harness list`` prints. Factories may also accept these *context* parameters, which the runner fills in
and users never write: ``embed_dim`` (int), ``dataset_info`` (:class:`harness.data.DatasetInfo`) and,
for encoders, ``modality`` (``"image"`` or ``"text"``: the side of the pair the encoder is built for) and,
for an encoder's head, ``input_dim`` (the encoder's ``output_dim``); heads and losses get ``x_dim`` and
``y_dim`` (the image and text encoders' ``output_dim``: the sizes a fusion fuses).

Lifecycle hooks observe a benchmark as it runs (loggers, reporters, dashboards). They must not change
what is trained; an exception in one is reported and does not stop the benchmark.
"""

from __future__ import annotations

import pluggy

PROJECT_NAME = "harness"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# --- registration hooks -------------------------------------------------------------------------------


@hookspec
def register_encoders(register):
    """Register encoders: ``register(name, factory)``.

    The factory builds a :class:`harness.components.Encoder` (a ``torch.nn.Module``) that maps one
    modality's prepared batch to a pooled ``[B, D]`` tensor, or to
    :class:`harness.components.TokenFeatures` (``features [B, N, D]`` per location / token and a
    boolean ``mask [B, N]``, True = real) for methods that score locations against tokens; it exposes
    ``output_dim``, ``modality`` and ``prepare(raw_batch)``. Every encoder also takes a ``head`` option
    in YAML (``{name: resnet, head: {name: mlp, hidden: [512]}}``): the runner stacks that registered
    head on it (the student–teacher pattern), so the pair's outputs meet in ``embed_dim``.
    """


@hookspec
def register_losses(register):
    """Register losses: ``register(name, factory)``.

    The factory builds a ``torch.nn.Module`` called as ``loss(image_emb, text_emb, **extras)`` on two
    ``[B, D]`` tensors whose row i is a matching pair, returning a 0-dim tensor (its formula belongs in
    the class docstring). Extras (``labels``, ``gaze``, ``negatives``, ``heads``…) are passed only if
    ``forward`` names them. With token features the loss gets ``[B, N, D]`` tensors, and
    ``image_mask`` / ``text_mask`` when it names them.

    Pair scores: a loss whose image–text score is not the cosine of pooled vectors defines
    ``pair_scores(image, text) -> [N_images, N_texts]`` (``image``/``text`` as the encoders return
    them); after training it becomes the method's score, which every evaluator comparing images with
    texts uses (in bounded blocks, :func:`harness.model.blockwise_scores`). A ``pair_scores`` that
    names ``heads`` gets the method's heads (a matching head's logit as the score).

    DDP: under ``torchrun`` each rank holds a shard of the global batch. A loss that gathers what it
    needs from every rank (:mod:`harness.distributed`), so that each rank computes the single-process
    loss of the global batch, says so with the class attribute ``gathers_across_ranks = True``; any
    other loss (batch statistics, negatives drawn from the rank's own shard) would train a different
    objective there, and a run under torchrun refuses it with a config error.
    """


@hookspec
def register_samplers(register):
    """Register samplers: ``register(name, factory)``.

    The factory builds a :class:`harness.components.Sampler`, which decides the negatives a loss sees
    (in-batch, a MoCo queue, a re-ranked pool) and may keep state across steps.
    """


@hookspec
def register_evaluators(register):
    """Register evaluators: ``register(name, factory)``.

    The factory builds a :class:`harness.components.Evaluator`: ``evaluate(context) -> {metric: float}``
    plus ``higher_is_better(metric) -> bool`` so tables can mark the best value.
    """


@hookspec
def register_datasets(register):
    """Register datasets: ``register(name, factory)``.

    The factory builds a :class:`harness.data.Dataset` whose ``split(name)`` returns aligned samples
    (images, captions, labels, and optional gaze maps, objects, relations) and whose ``info`` describes
    the vocabulary and classes.
    """


@hookspec
def register_heads(register):
    """Register task heads: ``register(name, factory)``.

    The factory builds a trainable ``torch.nn.Module`` on top of encoder features for a structured
    task (cross-attention grounding of object phrases, a bilinear relation module), or between an
    encoder and the shared space (the ``mlp`` teacher heads of student–teacher encoders: an encoder's
    ``head: {name: mlp, hidden: [512]}`` option, built with the context parameter ``input_dim``, the
    encoder's ``output_dim``, and ending at ``embed_dim``). A method lists its
    heads (``heads: {relation: {name: bilinear-relation}}``); the runner builds them with the context
    parameters, trains them with the encoders (``model.heads[key]``), hands them to a loss whose
    ``forward`` names ``heads``, and evaluators find them on the trained model.
    """


@hookspec
def register_transforms(register):
    """Register training transforms: ``register(name, factory)``.

    The factory builds a ``torch.nn.Module`` called as ``transform(images, **extras)`` on the training
    batch's raw images as floats in [0, 1] ``[B, C, H, W]``, before the image encoder's ``prepare``
    (which gets the result back in the dataset's own dtype, as at evaluation); never at evaluation. A method lists them, applied in order: ``train: {transforms: [{name: hflip},
    {name: gaze, p: 0.3}]}``. The transform gets the per-image extras its ``forward`` names (``gaze``,
    ``obj_bbox``, ``relations``…, and ``captions``: the batch's caption strings) and returns the new
    images, or ``(images, {extra: new_value})`` for extras it moved with the image (a flip moves the
    gaze maps and boxes and swaps "left" and "right"); later transforms and the loss see those. It
    draws random numbers from torch's global generator only, which the runner seeds for every batch
    from the run's seed (apart from the model's own random stream), so a run is reproducible.
    """


@hookspec
def register_fusions(register):
    """Register fusions (joint representations): ``register(name, factory)``.

    The factory builds a ``torch.nn.Module`` called as ``fusion(x, y)`` on ``x [B, x_dim]`` and
    ``y [B, y_dim]``, returning ``[B, output_dim]`` (concatenation, bilinear pooling, MCB…; formula in
    the class docstring). ``x_dim`` and ``y_dim`` are context parameters (in Python, explicit:
    ``harness.create("fusion", "mcb", x_dim=2048, y_dim=2048, dim=16000)``); a head that fuses the two
    encoders' outputs (``heads: {match: {name: matcher, fusion: {name: mlb, dim: 256}}}``) builds its
    fusion with the encoders' output sizes.
    """


@hookspec
def register_estimators(register):
    """Register closed-form estimators: ``register(name, factory)``.

    The factory builds an sklearn-style object with ``fit(X, Y) -> self``,
    ``transform(X, Y) -> (U, V)`` and ``correlations(X, Y)`` (linear CCA, kernel CCA, ...).
    """


@hookspec
def register_launchers(register):
    """Register launchers: ``register(name, factory)``.

    The factory builds a :class:`harness.launchers.Launcher` from its options (``--launcher-opt
    KEY=VALUE`` or the benchmark's ``launcher: {name: …, <options>}``); ``launch(tasks, run_here)``
    runs the pending (method, seed) jobs — in this process, local worker processes, a cluster — and
    yields each task with its result as it finishes. Results are always the per-job files.
    """


@hookspec
def register_loggers(register):
    """Register experiment loggers: ``register(name, factory)``.

    A benchmark turns loggers on with ``loggers: [{name: tensorboard, dir: tb}, {name: csv}]``. For
    each run, the runner builds every listed logger with its parameters and the context parameter
    ``result_path`` (the run's result file, for output beside it) and registers the object as a plugin
    for that run only: it implements lifecycle hooks below (``on_run_start``, ``on_step_end``,
    ``on_epoch_end``, ``on_run_end``) as ``@hookimpl`` methods, and ``close()`` if it holds files. The
    factory must not touch the disk (``harness validate`` builds it too). A logger only observes: it gets
    copies, random number generators are restored after it, and one that raises is reported once and
    the run goes on, with the same result.
    """


# --- lifecycle hooks ----------------------------------------------------------------------------------


@hookspec
def on_benchmark_start(benchmark, jobs):
    """Called once before any run: ``benchmark`` is the validated config, ``jobs`` the runs to do."""


@hookspec
def on_run_start(job):
    """Called before one (method, seed) run trains; ``job`` is its resolved, serializable description."""


@hookspec
def on_step_end(job, step, logs):
    """Called after every ``harness.training.STEP_HOOK_EVERY``-th optimizer step (10: steps 0, 10, 20,
    … counted across epochs and stages) of a gradient-trained run; ``logs`` holds the step's loss, lr
    and epoch."""


@hookspec
def on_epoch_end(job, epoch, logs):
    """Called after each training epoch of a gradient-trained run; ``logs`` holds loss, lr, seconds."""


@hookspec
def on_run_end(job, result):
    """Called after a run's result file is written; ``result`` is the :class:`harness.results.RunResult`."""


@hookspec
def on_benchmark_end(benchmark, results):
    """Called once after every run, with all result objects (including skipped, already-finished runs)."""
