"""The typed schema of a benchmark file (pydantic): datasets, methods, stages, train settings, report.

:mod:`harness.config` loads YAML into it (overrides, defaults, sweeps) and reports errors where the
fields were written.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt, PositiveFloat,
                      PositiveInt, PrivateAttr, ValidationError, field_validator, model_validator)

SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._+@=,\-]*$"  # becomes a directory name


class ComponentSpec(BaseModel):
    """``{name: ..., <params>}``: a registered component and its parameters."""

    model_config = ConfigDict(extra="allow")
    name: str

    @property
    def params(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class TrainSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    epochs: PositiveInt = 5
    batch_size: PositiveInt = 128
    optimizer: Literal["adamw", "adam", "sgd", "lbfgs"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 0.01
    momentum: NonNegativeFloat = 0.9  # sgd only
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    warmup_epochs: NonNegativeFloat = 0.0
    step_size: PositiveInt = 10  # epochs between lr drops ("step" schedule)
    gamma: PositiveFloat = 0.1  # lr factor per drop ("step" schedule)
    grad_clip: PositiveFloat | None = None  # max global gradient norm
    lbfgs_max_iter: PositiveInt = 20  # iterations per epoch with the full-batch L-BFGS optimizer
    precision: Literal["fp32", "bf16"] = "fp32"
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    eval_batch_size: PositiveInt = 512
    # with eval_splits [val, …]: score the val split every N epochs into the history (val curves)
    val_every: NonNegativeInt = 0
    checkpoint: bool = False  # save weights + loss/sampler state beside the result (seed-<n>.pt)
    # every K epochs, the whole training state (seed-<n>.resume.pt): a killed run continues from it
    checkpoint_every: NonNegativeInt = 0
    # frozen encoders' outputs computed once per split and cached on disk (see harness.features)
    feature_cache: bool = True
    # CPU threads torch uses for this run (None: torch's default, one per core); 1 when several
    # benchmarks share a machine, whose default thread pools otherwise oversubscribe the cores
    threads: PositiveInt | None = None
    # torch's deterministic algorithms (and cuDNN's, and cuBLAS's workspace setting on CUDA) for the
    # run: bitwise-repeatable GPU runs, at a cost in speed there (README, "Deterministic mode")
    deterministic: bool = False
    # data-loading processes (decode, transforms, the encoders' prepare) for training and evaluation;
    # 0: in the run's own process; auto: none for in-memory data, else one per CPU thread (at most 8)
    workers: NonNegativeInt | Literal["auto"] = "auto"
    # training-time transforms of the raw images, applied in order (never at evaluation)
    transforms: list[ComponentSpec] = []


class EncodersSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: ComponentSpec | None = None
    text: ComponentSpec | None = None


class StageSpec(BaseModel):
    """One stage of a method trained in stages (pretrain, then fine-tune): its own loss (and sampler),
    train settings over the method's (``train: {epochs: 3, lr: 1.0e-4}``) and the parts it keeps
    fixed (``freeze``: parameter-name prefixes such as ``image_encoder.features`` or ``text_encoder``)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SAFE_NAME)
    loss: ComponentSpec
    sampler: ComponentSpec | None = None
    train: dict[str, Any] = {}
    freeze: list[str] = []


class MethodSpec(BaseModel):
    """One method of a benchmark: gradient-trained (``loss``, or ``stages`` of losses) or closed-form
    (``estimator``). ``heads`` are trainable task heads (relation modules) trained with the encoders."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SAFE_NAME)
    encoders: EncodersSpec = EncodersSpec()
    embed_dim: PositiveInt = 64
    loss: ComponentSpec | None = None
    sampler: ComponentSpec | None = None
    estimator: ComponentSpec | None = None
    heads: dict[str, ComponentSpec] = {}
    stages: list[StageSpec] | None = None
    train: TrainSpec = TrainSpec()

    @model_validator(mode="after")
    def _one_objective(self) -> "MethodSpec":
        objectives = sum(x is not None for x in (self.loss, self.estimator, self.stages))
        if objectives != 1:
            raise ValueError("a method needs exactly one of 'loss' (gradient-trained), 'stages' (trained "
                             "in stages, each with its loss) or 'estimator' (closed-form)")
        if self.sampler is not None and self.loss is None:
            raise ValueError("'sampler' needs a 'loss' (in stages, give each stage its sampler)")
        if self.encoders.image is None or self.encoders.text is None:
            raise ValueError("'encoders' needs both 'image' and 'text' (set them in 'defaults' or "
                             "the method)")
        if self.estimator is not None and self.heads:
            raise ValueError("'heads' are trained: a closed-form method (estimator) cannot have them")
        if self.stages is not None:
            if not self.stages:
                raise ValueError("'stages' needs at least one stage")
            names = [stage.name for stage in self.stages]
            if len(set(names)) != len(names):
                raise ValueError(f"stage names must be unique, got {names}")
            for stage in self.stages:
                try:
                    self.stage_train(stage)
                except ValidationError as exc:
                    err = exc.errors()[0]
                    raise ValueError(f"stage {stage.name!r}: train.{'.'.join(map(str, err['loc']))}: "
                                     f"{err['msg']}") from None
        return self

    @property
    def kind(self) -> str:
        return "closed-form" if self.estimator is not None else "gradient"

    def stage_train(self, stage: StageSpec) -> TrainSpec:
        """A stage's train settings: the method's, overridden by the stage's own."""
        return TrainSpec.model_validate({**self.train.model_dump(), **stage.train})

    def stage_list(self) -> list[StageSpec]:
        """The stages to train, in order: one stage named ``train`` for a method with a single loss."""
        if self.stages is not None:
            return list(self.stages)
        if self.loss is None:
            return []
        return [StageSpec(name="train", loss=self.loss, sampler=self.sampler)]


class PartialComponentSpec(ComponentSpec):
    """A component in ``defaults``: its ``name`` may be left to the methods."""

    name: str | None = None


class PartialEncodersSpec(EncodersSpec):
    image: PartialComponentSpec | None = None
    text: PartialComponentSpec | None = None


class DefaultsSpec(BaseModel):
    """``defaults``: any part of a method but its name, merged into every method. Validated on its own
    first, so that a bad default is reported once, at ``defaults.…``, not once per method."""

    model_config = ConfigDict(extra="forbid")
    encoders: PartialEncodersSpec | None = None
    embed_dim: PositiveInt | None = None
    loss: PartialComponentSpec | None = None
    sampler: PartialComponentSpec | None = None
    estimator: PartialComponentSpec | None = None
    heads: dict[str, PartialComponentSpec] | None = None
    stages: list[StageSpec] | None = None
    train: TrainSpec | None = None  # every TrainSpec field has a default: a partial one validates


class ReportSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metrics: list[str] = []


class BenchmarkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=SAFE_NAME)
    dataset: ComponentSpec
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    methods: list[MethodSpec] = Field(min_length=1)
    evaluators: list[ComponentSpec] = Field(default_factory=lambda: [ComponentSpec(name="retrieval")])
    report: ReportSpec = ReportSpec()
    plugins: list[str] = []  # extra plugin modules, like --plugin
    # splits the evaluators score: test metrics keep their names ("retrieval/rsum"), the others get
    # the split as a prefix ("val/retrieval/rsum") so settings can be chosen on val, reported on test;
    # "train" scores the training split (as it is, without training transforms) for train–val gaps
    eval_splits: list[Literal["val", "test", "train"]] = Field(default_factory=lambda: ["test"], min_length=1)
    # where the jobs run (an execution setting: never part of a result's configuration)
    launcher: ComponentSpec = Field(default_factory=lambda: ComponentSpec(name="inline"))
    # experiment loggers that observe every run (an execution setting: never part of a configuration)
    loggers: list[ComponentSpec] = []
    # variant name -> {"base": name as written, "values": {swept key path: value}}; filled by resolve
    sweeps: dict[str, dict[str, Any]] = Field(default_factory=dict, exclude=True)
    # `defaults` as written (already merged into the methods); filled by resolve
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec, exclude=True)
    _origins: Any = PrivateAttr(default=None)  # an Origins; set by resolve

    def locate(self, field: str) -> dict[str, Any]:
        """Where ``field`` was written, as keyword arguments for :class:`ConfigError`:
        ``{"line": 7}``, ``{"override": "defaults.train.epochs=0"}`` or ``{}`` when unknown."""
        return self._origins.locate(field, self.sweeps) if self._origins is not None else {}

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be unique, got {seeds}")
        return seeds

    @field_validator("methods", "evaluators", "loggers")
    @classmethod
    def _unique_names(cls, items: list[Any]) -> list[Any]:
        names = [item.name for item in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"names must be unique; repeated: {', '.join(dupes)}")
        return items

    @field_validator("eval_splits")
    @classmethod
    def _unique_splits(cls, splits: list[str]) -> list[str]:
        if len(set(splits)) != len(splits):
            raise ValueError(f"splits must be unique, got {splits}")
        return splits
