"""Plugin discovery and the component registry behind ``harness.create`` and ``harness.available``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata as metadata
import inspect
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from pathlib import Path

import pluggy

from harness import hookspecs
from harness.errors import HarnessError, UnknownComponentError, did_you_mean
from harness.results import Provider

ENTRY_POINT_GROUP = "harness"

#: kind (as used in YAML and ``harness.create``) -> registration hook
KINDS: dict[str, str] = {
    "encoder": "register_encoders",
    "loss": "register_losses",
    "sampler": "register_samplers",
    "evaluator": "register_evaluators",
    "dataset": "register_datasets",
    "estimator": "register_estimators",
    "head": "register_heads",
    "transform": "register_transforms",
    "fusion": "register_fusions",
    "launcher": "register_launchers",
    "logger": "register_loggers",
}

#: parameters the runner fills in; users never write them in YAML
CONTEXT_PARAMS = frozenset({"embed_dim", "dataset_info", "modality", "input_dim", "x_dim", "y_dim",
                            "result_path"})  # loggers: the run's result file


@dataclass(frozen=True)
class Component:
    kind: str
    name: str
    factory: Callable[..., Any]
    plugin: str

    @property
    def description(self) -> str:
        doc = inspect.getdoc(self.factory) or ""
        return doc.strip().splitlines()[0].replace("``", "") if doc.strip() else ""

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The user-settable keyword parameters of the factory (context parameters excluded)."""
        return {name: p for name, p in _signature(self.factory).parameters.items()
                if name not in CONTEXT_PARAMS and name != "self"
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}

    def accepts_any_param(self) -> bool:
        return any(p.kind is p.VAR_KEYWORD for p in _signature(self.factory).parameters.values())

    def check_params(self, params: dict[str, Any]) -> None:
        """Raise :class:`UnknownComponentError` for unknown or missing parameters."""
        known = self.parameters()
        if not self.accepts_any_param():
            for key in params:
                if key not in known:
                    valid = ", ".join(sorted(known)) or "none"
                    raise UnknownComponentError(
                        f"{self.kind} {self.name!r} has no parameter {key!r}{did_you_mean(key, known)}; "
                        f"valid parameters: {valid}", field=key)
        missing = [n for n, p in known.items() if p.default is p.empty and n not in params]
        if missing:
            raise UnknownComponentError(
                f"{self.kind} {self.name!r} needs parameter(s) {', '.join(missing)}", field=missing[0])

    def check_types(self, params: dict[str, Any]) -> dict[str, Any]:
        """``params`` validated against the factory's annotations (:mod:`harness.param_types`): the
        values to build with; a value of the wrong type raises a :class:`ConfigError` naming it."""
        from harness.param_types import check_param_types
        return check_param_types(self.factory, params)

    def build(self, params: dict[str, Any], context: dict[str, Any] | None = None) -> Any:
        self.check_params(params)
        params = self.check_types(params)
        accepted = _signature(self.factory).parameters
        extra = {k: v for k, v in (context or {}).items() if k in accepted and k not in params}
        return self.factory(**params, **extra)


def _hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if n.startswith(("register_", "on_"))]


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise UnknownComponentError(
            f"unknown component kind {kind!r}{did_you_mean(kind, KINDS)}; kinds: {', '.join(KINDS)}")


def _signature(factory: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # builtins without a signature accept anything
        return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


@dataclass
class PluginInfo:
    name: str
    version: str | None
    hooks: list[str]
    source: str  # "entry point", "--plugin" or "object"
    distribution: str | None = None  # the installed distribution (entry points)
    module: str | None = None
    sha256: str | None = None  # content hash of the module's source (--plugin and objects)


def source_hash(module: object) -> str | None:
    """SHA-256 of a module's source: its file, or every ``.py`` file of a package, by relative path."""
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file)
    files = sorted(path.parent.rglob("*.py")) if path.name == "__init__.py" else [path]
    digest = hashlib.sha256()
    for f in files:
        digest.update(str(f.relative_to(path.parent)).encode() + b"\0")
        try:
            digest.update(f.read_bytes())
        except OSError:
            return None
        digest.update(b"\0")
    return digest.hexdigest()


@dataclass
class PluginLoadError:
    name: str
    error: str
    details: str = field(repr=False, default="")


class DuplicateComponentError(HarnessError):
    pass


class PluginImportError(HarnessError):
    """A plugin module the user named (``-p``, ``plugins:``) cannot be imported or registered."""

    def __init__(self, module: str, error: str):
        self.module, self.error = module, error
        super().__init__(f"plugin module {module!r} could not be loaded: {error}")


class Registry:
    """Loads plugins into a pluggy manager and indexes the components they register."""

    def __init__(self, modules: Iterable[str] = (), *, entry_points: bool = True):
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.load_errors: list[PluginLoadError] = []
        self._components: dict[str, dict[str, Component]] | None = None
        if entry_points:
            self._load_entry_points()
        for module in modules:
            self.add_module(module)

    # -- loading ------------------------------------------------------------------------------------
    def _load_entry_points(self) -> None:
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            if self.pm.has_plugin(ep.name):
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # a broken plugin is reported, not fatal to the others
                self.load_errors.append(PluginLoadError(ep.name, f"{type(exc).__name__}: {exc}",
                                                        traceback.format_exc()))
                continue
            dist = ep.dist
            self._register(plugin, ep.name, PluginInfo(
                ep.name, dist.version if dist else None, [], "entry point",
                distribution=dist.metadata["Name"] if dist else None, module=ep.module))

    def add_module(self, module: str) -> None:
        """Load a plugin by import path (``harness --plugin MODULE``, a benchmark's ``plugins:``).

        The user asked for it by name, so a failure raises :class:`PluginImportError`."""
        if self.pm.has_plugin(module):
            return
        try:
            plugin = importlib.import_module(module)
        except Exception as exc:
            raise PluginImportError(module, f"{type(exc).__name__}: {exc}") from None
        if not self._register(plugin, module, PluginInfo(
                module, getattr(plugin, "__version__", None), [], "--plugin", module=module,
                sha256=source_hash(plugin))):
            raise PluginImportError(module, self.load_errors.pop().error)

    def add_plugin(self, plugin: object, name: str) -> None:
        """Register an already-imported plugin object (tests, notebooks)."""
        self._register(plugin, name, PluginInfo(
            name, getattr(plugin, "__version__", None), [], "object",
            module=getattr(plugin, "__name__", None), sha256=source_hash(plugin)))

    def _register(self, plugin: object, name: str, info: PluginInfo) -> bool:
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # e.g. a hookimpl whose arguments match no spec
            self.load_errors.append(PluginLoadError(name, f"{type(exc).__name__}: {exc}",
                                                    traceback.format_exc()))
            return False
        unknown = sorted(caller.name for caller in self.pm.get_hookcallers(plugin) or []
                         if not caller.has_spec())
        if unknown:  # a misspelt hook (register_lossez) would otherwise register nothing, silently
            self.pm.unregister(plugin)
            self.load_errors.append(PluginLoadError(
                name, f"hook(s) {', '.join(unknown)} match no hook of the contract"
                      f"{did_you_mean(unknown[0], _hook_names())}; see harness/hookspecs.py"))
            return False
        info.hooks = sorted(h.name for h in self.pm.get_hookcallers(plugin) or [])
        self.plugins[name] = info
        self._components = None
        return True

    # -- components ---------------------------------------------------------------------------------
    @property
    def components(self) -> dict[str, dict[str, Component]]:
        if self._components is None:
            self._components = self._collect()
        return self._components

    def _collect(self) -> dict[str, dict[str, Component]]:
        found: dict[str, dict[str, Component]] = {kind: {} for kind in KINDS}
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                plugin_name = impl.plugin_name

                def register(name: str, factory: Callable[..., Any], *, _kind=kind,
                             _plugin=plugin_name) -> None:
                    existing = found[_kind].get(name)
                    if existing is not None:
                        raise DuplicateComponentError(
                            f"{_kind} {name!r} is registered twice: by plugin {existing.plugin!r} and "
                            f"by plugin {_plugin!r}; uninstall one or rename the component")
                    found[_kind][name] = Component(_kind, name, factory, _plugin)

                try:
                    impl.function(register=register)
                except DuplicateComponentError:
                    raise
                except Exception as exc:  # isolate a plugin whose registration hook raises
                    self.load_errors.append(PluginLoadError(
                        plugin_name, f"{hook_name} raised {type(exc).__name__}: {exc}",
                        traceback.format_exc()))
        return found

    def get(self, kind: str, name: str) -> Component:
        _check_kind(kind)
        names = self.components[kind]
        if name not in names:
            valid = ", ".join(sorted(names)) or "none installed"
            raise UnknownComponentError(
                f"unknown {kind} {name!r}{did_you_mean(name, names)}; available: {valid}", field="name")
        return names[name]

    def provider(self, kind: str, name: str) -> Provider:
        """The plugin behind a component, as recorded in result files."""
        component = self.get(kind, name)
        info = self.plugins.get(component.plugin)
        if info is None:  # registered by a plugin object pluggy knows but we did not load
            return Provider(kind=kind, name=name, plugin=component.plugin)
        if info.distribution is not None:  # an installed distribution: its version names the code
            return Provider(kind=kind, name=name, plugin=info.name, distribution=info.distribution,
                            version=info.version)
        return Provider(kind=kind, name=name, plugin=info.name, module=info.module, sha256=info.sha256,
                        version=info.version)

    def create(self, kind: str, name: str, /, **params: Any) -> Any:
        """Build a component; context parameters (``embed_dim``, ``dataset_info``, ``modality``) may be
        given explicitly, as the runner would fill them in."""
        context = {k: params.pop(k) for k in list(params) if k in CONTEXT_PARAMS}
        return self.get(kind, name).build(params, context)

    def available(self, kind: str | None = None) -> dict[str, list[str]]:
        if kind is not None:
            _check_kind(kind)
            return {kind: sorted(self.components[kind])}
        return {k: sorted(v) for k, v in self.components.items()}

    def hook(self):
        return self.pm.hook


_default: Registry | None = None
_default_lock = threading.Lock()
_extra_modules: list[str] = []


def default_registry() -> Registry:
    """The process-wide registry: installed entry points plus modules added with :func:`load_plugins`."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Registry(_extra_modules)
        return _default


def load_plugins(modules: Iterable[str]) -> Registry:
    """Add plugin modules (by import path) to the default registry, like ``--plugin``."""
    registry = default_registry()
    for module in modules:
        registry.add_module(module)  # raises PluginImportError before the module is remembered
        if module not in _extra_modules:
            _extra_modules.append(module)
    return registry


def reset_default_registry() -> None:
    """Forget the default registry (tests; after installing a plugin in-process)."""
    global _default
    with _default_lock:
        _default = None
        _extra_modules.clear()
