"""Gradient training of one job: the optimizer and schedule, samplers, stages, DDP, mid-run resume, the
dry run (batches are made in :mod:`harness.batches`, checkpoint files written by
:mod:`harness.checkpoints`)."""

from __future__ import annotations

import functools
import inspect
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from harness.batches import finish_batch, float_images, load_batch, make_batch
from harness.checkpoints import Resume, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from harness.components import FalseNegatives, Sampler, transform_extras
from harness.config import StageSpec, TrainSpec
from harness.data import Dataset, PairRelevance, Split
from harness.distributed import (average_gradients, broadcast_state, is_distributed, mean_over_ranks, rank, shard,
                                 world_size)
from harness.errors import HarnessError
from harness.jobs import Diverged, Job, _build
from harness.loader import TrainBatches, resolve_workers
from harness.model import DualEncoder
from harness.registry import Registry

__all__ = ["DRY_RUN_SAMPLES", "SAMPLER_EXTRAS", "check_distributed_loss", "dry_run", "finish_batch",
           "float_images", "freeze", "load_batch", "load_checkpoint", "lr_factor", "make_batch", "make_optimizer",
           "masks_false_negatives", "save_checkpoint", "train_gradient"]  # batch and checkpoint functions have modules of their own

# --- gradient training ------------------------------------------------------------------------------

#: extras that a sampler, the encoders' token features or false-negative masking supply (never taken
#: from the dataset)
SAMPLER_EXTRAS = frozenset({"negatives", "image_mask", "text_mask", "false_negatives"})


def masks_false_negatives(loss: torch.nn.Module, sampler: Sampler,
                          transforms: Sequence[torch.nn.Module] = ()) -> bool:
    """Whether the method masks false negatives (``mask_false_negatives`` on its loss or its sampler);
    ``ValueError`` when it asks for it but cannot have it."""
    if not (getattr(loss, "mask_false_negatives", False) or getattr(sampler, "mask_false_negatives", False)):
        return False
    if "false_negatives" not in inspect.signature(loss.forward).parameters:
        raise ValueError(f"mask_false_negatives: loss {type(loss).__name__} cannot mask false negatives "
                         "(its forward takes no `false_negatives` argument)")
    for transform in transforms:
        if "captions" in transform_extras(transform):
            raise ValueError(f"mask_false_negatives: transform {type(transform).__name__} rewrites captions, "
                             "so the dataset's relevance would no longer say which caption is true of which "
                             "image; drop the transform or the masking")
    return True
#: ``on_step_end`` is called on every this-many-th optimizer step, so observers cost the loop little
STEP_HOOK_EVERY = 10


def check_distributed_loss(loss: Any, world_size: int) -> None:
    """``ValueError`` when ``world_size`` > 1 ranks would train ``loss`` (a loss, or its class) on a
    different objective than one process: only a loss that gathers the global batch
    (``gathers_across_ranks``) is exact there."""
    if world_size > 1 and not getattr(loss, "gathers_across_ranks", False):
        name = getattr(loss, "__name__", type(loss).__name__)
        raise ValueError(f"loss {name} computes its value on each rank's shard of the batch "
                         f"(batch statistics or negatives from the shard), so under torchrun with "
                         f"{world_size} ranks it would train a different objective than one process; "
                         "run this method without torchrun (losses that gather the global batch, such as "
                         "infonce, triplet or matchmap, run under it)")


def _loss_extras(loss: torch.nn.Module) -> list[str]:
    """Keyword extras the loss's ``forward`` names beyond the two embeddings."""
    params = list(inspect.signature(loss.forward).parameters.values())[2:]
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
            and p.name not in SAMPLER_EXTRAS]


def make_optimizer(model_params: list[torch.nn.Parameter], loss_params: list[torch.nn.Parameter],
                   train: TrainSpec) -> torch.optim.Optimizer:
    """The configured optimizer; a loss's own parameters (e.g. a learnable temperature) get no weight
    decay, which would otherwise pull them towards 0."""
    if train.optimizer == "lbfgs":  # full batch, no weight decay term
        return torch.optim.LBFGS([*model_params, *loss_params], lr=train.lr,
                                 max_iter=train.lbfgs_max_iter, line_search_fn="strong_wolfe")
    groups = [{"params": model_params, "weight_decay": train.weight_decay}]
    if loss_params:
        groups.append({"params": loss_params, "weight_decay": 0.0})
    if train.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=train.lr)
    if train.optimizer == "adam":
        return torch.optim.Adam(groups, lr=train.lr)
    return torch.optim.SGD(groups, lr=train.lr, momentum=train.momentum)


def lr_factor(step: int, steps_per_epoch: int, train: TrainSpec) -> float:
    """Linear warm-up, then cosine decay to 0, step decay, or constant."""
    total = max(1, train.epochs * steps_per_epoch)
    warmup = int(train.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return (step + 1) / warmup
    if train.schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    if train.schedule == "step":
        return train.gamma ** ((step // steps_per_epoch) // train.step_size)
    return 1.0


def train_gradient(job: Job, model: DualEncoder, split: Split, dataset: Dataset, registry: Registry,
                   context: dict[str, Any], device: torch.device, *, progress: bool = True,
                   notify: Callable[..., None] | None = None,
                   epoch_metrics: Callable[[int, bool], dict[str, Any]] | None = None,
                   checkpoint_path: str | Path | None = None, resume: Resume | None = None
                   ) -> list[dict[str, Any]]:
    """Train ``model`` with the job's loss (and sampler), or stage by stage with each stage's loss,
    settings and frozen parts, and return the per-epoch history (epochs numbered across stages; each
    entry names its stage when the method has stages). After each epoch, ``epoch_metrics(epoch,
    last)`` (validation scores, say) is added to that epoch's entry. The last stage whose loss defines
    ``pair_scores`` gives the method its pair score. With ``resume``, training continues from its last
    checkpoint and writes new ones. Under DDP every rank calls this with the same job."""
    spec = job.spec
    stages = spec.stage_list()
    start = resume.load() if resume is not None else None
    history: list[dict[str, Any]] = list(start["history"]) if start else []
    states: dict[str, dict[str, Any]] = dict(start["finished"]) if start else {}
    on_step = _StepNotifier(job, notify, first=start.get("steps", 0) if start else 0)
    if start:
        model.load_state_dict(start["model"])
        if rank() == 0:
            print(f"{job.name} seed={job.seed}: resuming from {resume.path.name} after epoch "
                  f"{len(history)}", file=sys.stderr)
    if is_distributed():
        _join_ranks(model, device, job.seed)
    for k, stage in enumerate(stages):
        if start and k < start["stage"]:  # finished before the checkpoint: only its pair score matters
            _restore_pair_score(model, registry, stage, context, states[stage.name]["loss"])
            continue
        train = spec.stage_train(stage)
        frozen = freeze(model, stage.freeze)
        try:
            loss_fn, sampler = _train_stage(
                job, k, stage, train, model, split, dataset, registry, context, device, history,
                frozen=frozen, named=spec.stages is not None, progress=progress, notify=notify,
                epoch_metrics=epoch_metrics, last_stage=k == len(stages) - 1, on_step=on_step,
                resume=resume, finished=states, start=start if start and k == start["stage"] else None)
        finally:
            for module, flags in frozen:  # later stages may train what this one kept fixed
                for param, flag in zip(module.parameters(), flags):
                    param.requires_grad_(flag)
        states[stage.name] = {"loss": loss_fn.state_dict(), "sampler": sampler.state_dict()}
    model.eval()
    if checkpoint_path is not None:
        if spec.stages is None:
            state = {"model": model.state_dict(), **states["train"], "history": history}
        else:
            state = {"model": model.state_dict(), "stages": states, "history": history}
        save_checkpoint(checkpoint_path, state)
    return history


class _StepNotifier:
    """``on_step(loss, lr, epoch)`` after each optimizer step: counts steps across epochs and stages
    (from ``first`` when a run resumes) and calls the ``on_step_end`` hook on every
    :data:`STEP_HOOK_EVERY`-th (0, 10, 20, …)."""

    def __init__(self, job: Job, notify: Callable[..., None] | None, first: int = 0):
        self.job, self.notify, self.steps = job, notify, first

    def __call__(self, loss: float, lr: float, epoch: int) -> None:
        step, self.steps = self.steps, self.steps + 1
        if self.notify is not None and step % STEP_HOOK_EVERY == 0:
            self.notify("on_step_end", job=self.job, step=step, logs={"loss": loss, "lr": lr, "epoch": epoch})



def _join_ranks(model: DualEncoder, device: torch.device, seed: int) -> None:
    """DDP: every rank starts from rank 0's weights (batch norm synchronised across ranks on CUDA), and
    ranks other than 0 draw dropout from streams of their own (rank 0 keeps the single-process one)."""
    if device.type == "cuda":
        for name, child in list(model.named_children()):
            setattr(model, name, torch.nn.SyncBatchNorm.convert_sync_batchnorm(child))
    broadcast_state(model)
    if rank() > 0:
        torch.manual_seed(int(np.random.default_rng([seed, rank()]).integers(2**62)))


def _restore_pair_score(model: DualEncoder, registry: Registry, stage: StageSpec, context: dict[str, Any],
                        loss_state: dict[str, Any]) -> None:
    loss_fn = _build(registry, "loss", stage.loss, context).to(model.device)
    loss_fn.load_state_dict(loss_state)
    if hasattr(loss_fn, "pair_scores"):
        model.scorer = loss_fn.pair_scores
        if "heads" in inspect.signature(loss_fn.pair_scores).parameters:  # a matching head's logit
            model.scorer = functools.partial(loss_fn.pair_scores, heads=model.heads)


def freeze(model: torch.nn.Module, prefixes: list[str]) -> list[tuple[torch.nn.Module, list[bool]]]:
    """Fix the parameters of every module named by a prefix (``image_encoder.features``): no gradient,
    and eval mode so that batch-norm statistics do not move either. Returns the modules with their
    previous ``requires_grad`` flags."""
    modules = dict(model.named_modules())
    frozen = []
    for prefix in prefixes:
        module = modules.get(prefix)
        if module is None:
            parts = sorted(n for n in modules if n and n.count(".") < 2)
            raise ValueError(f"freeze: the model has no part named {prefix!r}; parts: {', '.join(parts)}")
        frozen.append((module, [p.requires_grad for p in module.parameters()]))
        module.requires_grad_(False)
    return frozen


def _train_stage(job: Job, k: int, stage: StageSpec, train: TrainSpec, model: DualEncoder, split: Split,
                 dataset: Dataset, registry: Registry, context: dict[str, Any], device: torch.device,
                 history: list[dict[str, Any]], *, frozen: list, named: bool, progress: bool,
                 notify: Callable[..., None] | None,
                 epoch_metrics: Callable[[int, bool], dict[str, Any]] | None,
                 last_stage: bool, on_step: Callable[[float, float, int], None] = lambda *_: None,
                 resume: Resume | None = None, finished: dict[str, dict[str, Any]] | None = None,
                 start: dict[str, Any] | None = None) -> tuple[torch.nn.Module, Sampler]:
    """One stage: its loss and sampler, optimizer and schedule, ``train.epochs`` epochs appended to
    ``history``. The first stage draws batches from the job's seed exactly as a single-loss run does.
    ``start`` (a mid-run checkpoint of this stage) restores its state and skips the epochs it had done;
    ``resume`` writes new checkpoints, with the states of the ``finished`` stages."""
    loss_fn = _build(registry, "loss", stage.loss, context).to(device)
    check_distributed_loss(loss_fn, world_size())
    sampler = _build(registry, "sampler", stage.sampler, context) if stage.sampler else Sampler()
    sampler.check_loss(loss_fn)
    sampler.setup(model, loss_fn)
    transforms = [_build(registry, "transform", comp, context) for comp in train.transforms]
    relevance = None
    if masks_false_negatives(loss_fn, sampler, transforms):
        # the exact relevance where the dataset has one, else each caption's own image
        relevance = PairRelevance(split, getattr(dataset, "relevance", lambda _: None)(split.name))
    if hasattr(loss_fn, "pair_scores"):  # the method's own pair score (match-map), also for val curves
        model.scorer = loss_fn.pair_scores
        if "heads" in inspect.signature(loss_fn.pair_scores).parameters:  # a matching head's logit
            model.scorer = functools.partial(loss_fn.pair_scores, heads=model.heads)
    extras_wanted = _loss_extras(loss_fn)
    class_names = list(dataset.info.class_names)
    model_params = [p for p in model.parameters() if p.requires_grad]
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    params = model_params + loss_params
    if not params:
        raise HarnessError("nothing to train: the encoders and the loss have no trainable parameters"
                           + (f" in stage {stage.name!r}" if named else ""))
    optimizer = make_optimizer(model_params, loss_params, train)

    texts_of_image = split.texts_of_image()
    counts = np.array([len(t) for t in texts_of_image])
    trainable = np.flatnonzero(counts > 0)  # images without a text cannot form a pair
    offsets = np.concatenate([[0], np.cumsum(counts)])
    flat_texts = np.concatenate(texts_of_image) if len(texts_of_image) else np.zeros(0, int)
    full_batch = train.optimizer == "lbfgs"
    batch_size = len(trainable) if full_batch else min(train.batch_size, len(trainable))
    steps_per_epoch = max(1, len(trainable) // batch_size)  # drop the ragged last batch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, steps_per_epoch, train))
    stage_seed = job.seed if k == 0 else int(np.random.default_rng([job.seed, k]).integers(2**62))
    order_rng = torch.Generator().manual_seed(stage_seed)
    caption_rng = np.random.default_rng(stage_seed)
    transform_rng = np.random.default_rng([stage_seed, 1])  # a stream of its own: adding a transform
    # changes neither the batches nor the captions drawn
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16,
                              enabled=train.precision == "bf16")
    shard_rows = shard(batch_size) if is_distributed() else None  # DDP: this rank's rows of each batch
    streams = {"order": order_rng, "caption": caption_rng, "transform": transform_rng}
    first_epoch = 0
    if start is not None:
        first_epoch = start["stage_epoch"]
        for part, obj in (("optimizer", optimizer), ("scheduler", scheduler), ("loss", loss_fn),
                          ("sampler", sampler)):
            obj.load_state_dict(start[part])
        set_rng_state(start["rng"], streams)

    def draw_captions(index: np.ndarray) -> np.ndarray:
        # one random caption of each image per step: every caption is seen across epochs
        return flat_texts[offsets[index] + (caption_rng.random(len(index)) * counts[index]).astype(int)]

    def batch_loss(index: np.ndarray, captions: np.ndarray, loaded: dict[str, Any]
                   ) -> tuple[torch.Tensor, dict, Any, Any]:
        batch, extras = finish_batch(model, loaded, extras_wanted, class_names, device)
        if shard_rows is not None:
            index, captions = index[shard_rows], captions[shard_rows]
        if relevance is not None:
            extras["false_negatives"] = FalseNegatives(torch.as_tensor(index, device=device),
                                                       torch.as_tensor(captions, device=device), relevance)
        with autocast:
            image_emb, text_emb = model(batch["images"], batch["texts"])
            loss = sampler.compute_loss(loss_fn, model, batch, image_emb, text_emb, extras)
        if not torch.isfinite(loss):
            raise Diverged(f"non-finite loss {loss.item()}")
        return loss, batch, image_emb, text_emb

    def train_mode() -> None:
        model.train()
        for module, _ in frozen:  # frozen parts keep their batch-norm statistics too
            module.eval()

    where = f"stage {stage.name}, " if named else ""
    bar = tqdm(total=(train.epochs - first_epoch) * steps_per_epoch, desc=f"{job.name} seed={job.seed}"
               + (f" {stage.name}" if named else ""), unit="step", leave=False, disable=not progress,
               file=sys.stderr)
    # the data workers run the transforms and the encoders' prepare on the epoch's planned batches
    batches = TrainBatches(
        functools.partial(load_batch, split, prepare_images=model.image_encoder.prepare,
                          prepare_texts=model.text_encoder.prepare, extras_wanted=extras_wanted,
                          transforms=transforms, rows=shard_rows),
        steps_per_epoch, batch_size, resolve_workers(train.workers, split), device)
    train_mode()
    try:
        for stage_epoch in range(first_epoch, train.epochs):
            epoch = len(history)
            t_epoch, losses = time.perf_counter(), []
            perm = torch.randperm(len(trainable), generator=order_rng).numpy()
            # the epoch's random choices, drawn here from the run's streams (the same whatever workers)
            rows = [trainable[perm[step * batch_size:(step + 1) * batch_size]]
                    for step in range(steps_per_epoch)]
            texts = [draw_captions(index) for index in rows]
            seeds = [int(transform_rng.integers(2**62)) if transforms else None for _ in rows]
            for step, loaded in enumerate(batches.epoch(rows, texts, seeds)):
                index, captions = rows[step], texts[step]
                if full_batch:
                    # L-BFGS evaluates the closure several times per step: all on the same captions,
                    # or its line search would chase a moving objective
                    def closure():
                        optimizer.zero_grad(set_to_none=True)
                        value = batch_loss(index, captions, loaded)[0]
                        value.backward()
                        average_gradients(params)
                        # every rank must take the same line-search decisions
                        return torch.tensor(mean_over_ranks(value.item()))
                    loss = optimizer.step(closure)
                    scheduler.step()
                    losses.append(float(loss.detach()))
                    bar.update(1)
                    on_step(losses[-1], optimizer.param_groups[0]["lr"], epoch)
                    continue
                try:
                    loss, batch, image_emb, text_emb = batch_loss(index, captions, loaded)
                except Diverged as exc:
                    raise Diverged(f"{exc} at {where}epoch {epoch}, step {step}") from None
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                average_gradients(params)
                if train.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
                optimizer.step()
                scheduler.step()
                sampler.after_step(model, batch, image_emb.detach(), text_emb.detach())
                losses.append(loss.item())
                bar.update(1)
                on_step(losses[-1], optimizer.param_groups[0]["lr"], epoch)
                if step % 10 == 0:
                    bar.set_postfix(epoch=epoch, loss=f"{losses[-1]:.4f}")
            if is_distributed():  # statistics as rank 0's, for evaluation and checkpoints
                broadcast_state(model)
            logs = {"epoch": epoch, "loss": mean_over_ranks(float(np.mean(losses))),
                    "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - t_epoch}
            if named:
                logs["stage"] = stage.name
            if not math.isfinite(logs["loss"]):
                raise Diverged(f"non-finite loss at {where}epoch {epoch}")
            if epoch_metrics is not None:
                model.eval()
                logs.update(epoch_metrics(epoch, last_stage and stage_epoch == train.epochs - 1))
                train_mode()
            history.append(logs)
            if notify is not None:
                notify("on_epoch_end", job=job, epoch=epoch, logs=dict(logs))
            if resume is not None and resume.every and (epoch + 1) % resume.every == 0:
                resume.save({"stage": k, "stage_epoch": stage_epoch + 1, "history": history,
                             "finished": dict(finished or {}), "model": model.state_dict(),
                             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                             "loss": loss_fn.state_dict(), "sampler": sampler.state_dict(),
                             "rng": rng_state(streams), "steps": getattr(on_step, "steps", 0)})
    finally:
        batches.close()
        bar.close()
    return loss_fn, sampler


DRY_RUN_SAMPLES = 4


def dry_run(model: DualEncoder, loss: torch.nn.Module, sampler: Sampler, split: Split,
            dataset: Dataset, transforms: Sequence[torch.nn.Module] = ()) -> None:
    """One forward pass of transforms + encoders + sampler + loss on the first few trainable samples,
    no gradient."""
    texts_of_image = split.texts_of_image()
    index = np.array([i for i, t in enumerate(texts_of_image) if len(t)][:DRY_RUN_SAMPLES])
    if len(index) == 0:
        raise ValueError("the train split has no image with a text")
    captions = np.array([texts_of_image[i][0] for i in index])
    sampler.setup(model, loss)
    with torch.no_grad():
        batch, extras = make_batch(model, split, index, captions, _loss_extras(loss),
                                   list(dataset.info.class_names), torch.device("cpu"), transforms, 0)
        if masks_false_negatives(loss, sampler, transforms):  # own-image relevance: cheap, same shapes
            extras["false_negatives"] = FalseNegatives(torch.as_tensor(index), torch.as_tensor(captions),
                                                       PairRelevance(split))
        image_emb, text_emb = model(batch["images"], batch["texts"])
        sampler.compute_loss(loss, model, batch, image_emb, text_emb, extras)

