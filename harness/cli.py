"""``harness`` command line: run, validate, table, plot, leaderboard, list, show, plugins, reproduce,
lock.

User errors (bad files, fields, names, arguments) print one clear line and exit with code 2; a benchmark
whose runs did not all finish ``ok`` exits with 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from harness.errors import HarnessError


def _parser() -> argparse.ArgumentParser:
    plugin_help = "load a plugin module by import path (repeatable)"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-p", "--plugin", action="append", default=[], metavar="MODULE", help=plugin_help)
    parser = argparse.ArgumentParser(prog="harness",
                                     description="Benchmark harness for multimodal representation learning")
    # before or after the command, like pytest's -p; kept apart so the subcommand's default can't erase it
    parser.add_argument("-p", "--plugin", action="append", default=[], metavar="MODULE",
                        dest="plugin_before_command", help=plugin_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def config_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="benchmark YAML file")
        p.add_argument("--set", action="append", default=[], metavar="KEY.PATH=VALUE", dest="overrides",
                       help="override a field, e.g. --set defaults.train.epochs=2 (repeatable)")

    p = sub.add_parser("run", parents=[common], help="train and evaluate every method x seed")
    config_args(p)
    # not "results": that folder holds the committed leaderboard runs, which a fresh run would skip
    p.add_argument("--out", default="runs",
                   help="folder for result files, one subfolder per benchmark (default: runs)")
    p.add_argument("--overwrite", action="store_true", help="redo runs that already have an ok result")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--launcher", metavar="NAME",
                   help="where the jobs run: inline (default), processes, … (see `harness list launcher`)")
    p.add_argument("--launcher-opt", action="append", default=[], metavar="KEY=VALUE",
                   help="a launcher option, e.g. --launcher-opt jobs=2 (repeatable)")

    p = sub.add_parser("validate", parents=[common], help="check a benchmark file without training")
    config_args(p)

    p = sub.add_parser("table", parents=[common], help="comparison table from result files")
    p.add_argument("directory", help="a benchmark's results folder, e.g. results/shapes "
                                      "(a folder of several benchmarks gives one table each)")
    p.add_argument("--format", default="github", choices=["github", "markdown", "latex", "html", "csv"],
                   help="github (alias markdown), latex (booktabs), html, or csv (mean, std, n, 95 %% "
                        "interval, test and tied-with-best columns per metric); default: github")
    p.add_argument("--metrics", nargs="+", metavar="METRIC", help="columns (default: the benchmark's report)")
    p.add_argument("--output", "-o", help="write the table to this file instead of stdout")

    p = sub.add_parser("plot", parents=[common], help="plots from result files and checkpoints")
    p.add_argument("directory", metavar="RUN_OR_DIR",
                   help="a benchmark's results folder, e.g. results/shapes: plots.png and metrics-ci.png "
                        "in it (a folder of several benchmarks: in each), and the model plots of each run "
                        "that kept a checkpoint; or one run's result file, seed-<n>.json: its embedding "
                        "map and retrieval examples, from its checkpoint seed-<n>.pt")
    p.add_argument("--metrics", nargs="+", metavar="METRIC",
                   help="metric panels (default: the benchmark's report)")
    p.add_argument("--output", "-o", help="write the figure to this file (.png, .pdf, .svg) instead")

    p = sub.add_parser("leaderboard", parents=[common],
                       help="merge result folders into one leaderboard: a static site, or Markdown")
    p.add_argument("directories", nargs="+", metavar="DIR",
                   help="result folders as written by harness run, from any machines or submitters "
                        "(NAME=DIR labels one)")
    p.add_argument("--output", "-o", metavar="SITE",
                   help="the folder to write the site into (html), or the Markdown file (md; default stdout)")
    p.add_argument("--format", default="html", choices=["html", "md"],
                   help="html: index.html and a page per benchmark (default); md: the merged tables")
    p.add_argument("--metrics", nargs="+", metavar="METRIC", help="columns (default: each benchmark's report)")

    p = sub.add_parser("list", parents=[common], help="list registered components")
    p.add_argument("kind", nargs="?", help="encoder, loss, sampler, evaluator, dataset or estimator")
    p.add_argument("name", nargs="?", help="show this component's parameters (as `harness show`)")

    p = sub.add_parser("show", parents=[common],
                       help="a component's parameters, types, defaults, trainable parameters and formula")
    p.add_argument("kind", help="encoder, loss, sampler, evaluator, dataset or estimator")
    p.add_argument("name", help="the component's registered name, e.g. infonce")

    sub.add_parser("plugins", parents=[common], help="list installed plugins and their hooks")

    p = sub.add_parser("reproduce", parents=[common],
                       help="rerun the jobs of result files and compare their metrics with the files'")
    p.add_argument("results", nargs="+", metavar="RESULT", help="result files, or folders of them")
    p.add_argument("--sample", type=int, metavar="N", help="check N result files drawn at random")
    p.add_argument("--sample-seed", type=int, metavar="SEED", help="the seed of --sample's draw")
    p.add_argument("--tolerance", default="auto", metavar="auto|ABS",
                   help="auto (default): identical in the same environment, else within 1.5x the "
                        "committed seeds' std; or the largest absolute difference for every metric")
    p.add_argument("--out", help="keep the reruns' result files here (default: a temporary folder)")

    p = sub.add_parser("lock", parents=[common],
                       help="a pinned requirements file of the environment result files were made in")
    p.add_argument("results", nargs="+", metavar="RESULT", help="result files, or folders of them")
    p.add_argument("--output", "-o", help="write it to this file instead of stdout")
    return parser


def _encoder_label(comp) -> str:
    """``efficientnet → mlp`` for an encoder with a head, else the encoder's name."""
    head = comp.params.get("head")
    return f"{comp.name} → {head.get('name', 'mlp')}" if isinstance(head, dict) else comp.name


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.plugin = [*args.plugin_before_command, *args.plugin]
    try:
        return _dispatch(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("harness: interrupted; finished result files are kept", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `harness list | head`: the reader left, nothing to report
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit flush
        return 1


def _registry(args: argparse.Namespace):
    from harness.validation import load_cli_plugins
    return load_cli_plugins(args.plugin)


def _report_load_errors(registry) -> None:
    for err in registry.load_errors:
        print(f"warning: plugin {err.name!r} failed to load: {err.error}", file=sys.stderr)


def _options(items: list[str], flag: str) -> dict:
    """``KEY=VALUE`` pairs, values read as YAML scalars (``jobs=2`` → 2)."""
    import yaml
    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HarnessError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            options[key] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise HarnessError(f"{flag} {key}: cannot parse value {value!r}") from None
    return options


def _check_out_dir(out: str) -> None:
    """Fail now, not after the last run, when ``--out`` cannot be a folder (it, or an ancestor, is a
    file). Nothing is created here: the runner makes the folder once the benchmark is valid."""
    path = Path(out)
    blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        reason = "exists and is not a folder" if blocker == path else f"{blocker} is not a folder"
        raise HarnessError(f"--out {out}: cannot use as results folder: {reason}")


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        _check_out_dir(args.out)
        from harness.forkserver import start_if_processes
        # before torch is imported here: the workers' fork server then imports it alongside
        start_if_processes(args.file, args.overrides, args.launcher)
        from harness.runner import run
        outcome = run(args.file, args.out, overrides=args.overrides, plugins=args.plugin,
                      overwrite=args.overwrite, progress=not args.no_progress, launcher=args.launcher,
                      launcher_options=_options(args.launcher_opt, "--launcher-opt"))
        from harness.distributed import rank
        if rank() == 0:  # under torchrun every rank returns the same outcome
            print(outcome.table)
            print(f"\nresults: {outcome.directory}", file=sys.stderr)
        return 0 if outcome.ok else 1

    if args.command == "validate":
        from harness.jobs import plan
        from harness.validation import prepare
        from harness.errors import MissingDataError
        try:
            spec, registry, _ = prepare(args.file, overrides=args.overrides, plugins=args.plugin)
            missing = None
        except MissingDataError as exc:  # the data is not here: check everything that needs none
            missing = exc
            spec, registry, _ = prepare(args.file, overrides=args.overrides, plugins=args.plugin, data=False)
        _report_load_errors(registry)
        jobs = plan(spec)
        checked = "ok" if missing is None else "configuration ok, data not checked"
        print(f"{args.file}: {checked} — {len(spec.methods)} method(s) × {len(spec.seeds)} seed(s) = "
              f"{len(jobs)} run(s) on dataset {spec.dataset.name!r}")
        if missing is not None:
            print(f"  the data is not on this machine: {missing}\n  (components, parameters and metrics "
                  f"were checked without it; give the paths with --set {missing.field}=… to check the "
                  f"data and run a forward pass)")
        for m in spec.methods:
            if m.stages:
                objective = "stages " + " → ".join(f"{st.name} (loss {st.loss.name})" for st in m.stages)
            else:
                objective = f"loss {m.loss.name}" if m.loss else f"estimator {m.estimator.name}"
            sampler = f", sampler {m.sampler.name}" if m.sampler else ""
            sampler += "".join(f", head {key}: {comp.name}" for key, comp in m.heads.items())
            transforms = [t.name for t in m.train.transforms]
            sampler += f", transforms {' → '.join(transforms)}" if transforms else ""
            print(f"  {m.name}: {_encoder_label(m.encoders.image)} + {_encoder_label(m.encoders.text)}, "
                  f"{objective}{sampler}")
        return 0

    if args.command == "table":
        from harness.results import load_results
        from harness.tables import build_table, check_metrics
        directory = Path(args.directory)
        if not directory.is_dir():
            raise HarnessError(f"{directory}: not a folder")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            results = load_results(directory)
        for w in caught:
            print(f"warning: {w.message}", file=sys.stderr)
        if not results:
            raise HarnessError(f"{directory}: no result files (expected <method>/seed-<n>.json)")
        if args.metrics:
            check_metrics(results, args.metrics)
        text = build_table(results, args.metrics, args.format)
        if args.output:
            try:
                Path(args.output).write_text(text + "\n")
            except OSError as exc:
                raise HarnessError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        else:
            print(text)
        return 0

    if args.command == "reproduce":
        from harness.reproduce import parse_tolerance, reproduce
        if args.sample is not None and args.sample < 1:
            raise HarnessError(f"--sample: expected a positive number of files, got {args.sample}")
        return 0 if reproduce(args.results, sample=args.sample, sample_seed=args.sample_seed,
                              absolute=parse_tolerance(args.tolerance), plugins=args.plugin,
                              out_dir=args.out) else 1

    if args.command == "lock":
        from harness.lock import lock
        written_as = ["harness", "lock", *args.results, *(["-o", args.output] if args.output else [])]
        text = lock(args.results, command=" ".join(written_as), output=args.output or "<this file>")
        if args.output is None:
            print(text, end="")
            return 0
        try:
            Path(args.output).write_text(text)
        except OSError as exc:
            raise HarnessError(f"cannot write {args.output}: {exc.strerror or exc}") from None
        return 0

    if args.command == "leaderboard":
        from harness.leaderboard import leaderboard_command
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return leaderboard_command(args.directories, args.output, args.format, args.metrics,
                                       progress=sys.stderr.isatty(),
                                       echo=lambda message: print(message, file=sys.stderr))

    if args.command == "plot" and Path(args.directory).is_file():
        from harness.model_plots import write_model_plots
        for path in write_model_plots(args.directory, progress=sys.stderr.isatty()):
            print(path)
        return 0

    if args.command == "plot":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            written = plot_directory(args.directory, args.output, args.metrics)
        for w in caught:
            if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning)):
                print(f"warning: {w.message}", file=sys.stderr)
        for folder, path in written:
            if path is None:
                print(f"warning: {folder}: nothing to plot", file=sys.stderr)
            else:
                print(path)
        if args.output is None:  # the plots of trained models, beside their result files
            from harness.model_plots import write_model_plots_in
            for path in write_model_plots_in(args.directory, progress=sys.stderr.isatty(),
                                             warn=lambda m: print(f"warning: {m}", file=sys.stderr)):
                print(path)
        return 0

    registry = _registry(args)
    _report_load_errors(registry)
    if args.command == "show" or (args.command == "list" and args.name):
        from harness.errors import ConfigError
        from harness.introspection import describe
        try:
            component = registry.get(args.kind, args.name)
        except ConfigError as exc:  # "unknown loss 'x' (did you mean …)", without a field prefix
            raise HarnessError(exc.message) from None
        print(describe(component))
        return 0

    if args.command == "list":
        from tabulate import tabulate
        from harness.registry import KINDS
        kinds = [args.kind] if args.kind else list(KINDS)
        rows = []
        for kind in kinds:
            names = registry.available(kind)[kind]
            for name in names:
                comp = registry.get(kind, name)
                rows.append([kind, name, comp.plugin, comp.description])
        print(tabulate(rows, headers=["kind", "name", "plugin", "description"], tablefmt="simple"))
        return 0

    if args.command == "plugins":
        from tabulate import tabulate
        rows = [[p.name, p.version or "", p.source, ", ".join(p.hooks)] for p in registry.plugins.values()]
        rows += [[e.name, "", "FAILED", e.error] for e in registry.load_errors]
        print(tabulate(rows, headers=["plugin", "version", "source", "hooks"], tablefmt="simple"))
        return 0
    raise HarnessError(f"unknown command {args.command!r}")  # pragma: no cover - argparse prevents it


def plot_directory(directory: str | Path, output: str | Path | None = None,
                   metrics: Sequence[str] | None = None) -> list[tuple[Path, Path | None]]:
    """``harness plot``: rebuild plots from result files alone. ``directory`` is a benchmark's folder
    (``results/shapes``: writes ``results/shapes/plots.png``, or ``output``) or a folder of benchmark
    folders (``results``: one ``plots.png`` inside each). Returns ``(folder, written path or None when
    it had nothing to draw)`` per benchmark folder. Unreadable result files are warned about and
    skipped; a folder without results, an unknown metric or an unwritable output raise
    :class:`HarnessError`."""
    from harness.metric_chart import save_metric_chart
    from harness.plots import plot_results
    from harness.results import load_results
    from harness.tables import check_metrics

    directory = Path(directory)
    if not directory.is_dir():
        raise HarnessError(f"{directory}: not a folder")

    def holds_results(folder: Path) -> bool:
        return any(folder.glob("*/seed-*.json"))

    folders = [directory] if holds_results(directory) else sorted(
        p for p in directory.iterdir() if p.is_dir() and holds_results(p))
    if not folders:
        raise HarnessError(f"{directory}: no result files (expected <method>/seed-<n>.json, or "
                           f"<benchmark>/<method>/seed-<n>.json for a folder of benchmarks)")
    if output is not None and len(folders) > 1:
        raise HarnessError(f"--output names one file but {directory} holds {len(folders)} benchmark "
                           f"folders; leave it out to write plots.png into each")
    loaded = {folder: load_results(folder) for folder in folders}
    everything = [r for results in loaded.values() for r in results]
    if not everything:
        raise HarnessError(f"{directory}: no readable result files")
    if metrics:
        check_metrics(everything, metrics)
    written = []
    for folder, results in loaded.items():
        if not results:
            continue
        known = {m for r in results for m in (*r.metrics, *r.report_metrics)}
        chosen = [m for m in metrics if m in known] if metrics else None
        target = Path(output) if output is not None else folder / "plots.png"
        try:
            written.append((folder, plot_results(results, target, chosen)))
            if output is None:  # the report metrics with their confidence intervals
                written.append((folder, save_metric_chart(results, folder / "metrics-ci.png", chosen)))
        except OSError as exc:
            raise HarnessError(f"cannot write {target}: {exc.strerror or exc}") from None
        except ValueError as exc:  # matplotlib: an output format it cannot write (".docx")
            raise HarnessError(f"cannot write {target}: {exc}") from None
    return written


if __name__ == "__main__":
    raise SystemExit(main())
