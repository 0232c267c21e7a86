"""Command line: ``fedsim run SCENARIO``, ``fedsim run-app PATH``, ``fedsim presets``.

Configuration mistakes print one line naming the field, the value and what is allowed,
and exit with code 2.
"""

from __future__ import annotations

import os
import signal
import sys


def _stopped_while_starting(signum: int, frame: object) -> None:
    if signum == signal.SIGTERM:
        sys.stderr.write("fedsim: terminated (SIGTERM) while starting; nothing was written\n")
    else:
        sys.stderr.write("fedsim: interrupted while starting; nothing was written\n")
    sys.stderr.flush()
    os._exit(128 + signum)


# Installed before the heavy imports below (seconds on a loaded machine), so a SIGTERM or
# Ctrl-C during start-up still ends with one line (exit 143 / 130), not a bare kill or an
# import traceback; `main` installs the run's handlers.
_STARTING = __name__ == "__main__" or os.path.basename(sys.argv[0] if sys.argv else "") == "fedsim"
if _STARTING:
    signal.signal(signal.SIGTERM, _stopped_while_starting)
    signal.signal(signal.SIGINT, _stopped_while_starting)

import argparse
import logging
import threading
from pathlib import Path

from fedsim.config import list_presets, resolve_scenario
from fedsim.core.errors import ConfigError, one_line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description="Federated-learning simulation on Flower strategies.")
    sub = parser.add_subparsers(dest="command", required=True)

    p_run = sub.add_parser("run", help="run a scenario TOML file (or a preset name)")
    p_run.add_argument("scenario", nargs="?", help="path to a scenario .toml, or a preset name (see `fedsim presets`)")
    p_run.add_argument("--resume", default=None, metavar="DIR",
                       help="continue the run in DIR from its last checkpoint (run.checkpoint_every)")
    p_run.add_argument("--resume-with-changes", dest="accept", action="append", default=[], metavar="FIELD[,FIELD]",
                       help="with --resume: the fields (or sections) whose change since the checkpoint is intended, "
                            "e.g. run.rounds; any other change is refused")
    p_run.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                       help="override a scenario value (repeatable), e.g. --set strategy.fraction_train=0.2")
    p_run.add_argument("--out", default=None, help="results folder (default: report.out_dir/<name>-<time>)")

    p_dep = sub.add_parser("deploy-app", help="write a Flower app folder running a scenario on Flower's Deployment Engine")
    p_dep.add_argument("scenario", help="path to a scenario .toml, or a preset name")
    p_dep.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p_dep.add_argument("--out", required=True, help="the app folder to write")
    p_dep.add_argument("--port", type=int, default=9093, help="the SuperLink port in the printed commands")

    p_check = sub.add_parser("check", help="validate a scenario (config, data, model, strategy) without training; "
                                           "a sweep file: every cell")
    p_check.add_argument("scenario", help="path to a scenario .toml, or a preset name")
    p_check.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")

    p_app = sub.add_parser("run-app", help="run an existing Flower app folder on fedsim's simulated grid")
    p_app.add_argument("path", help="folder with the app's pyproject.toml")
    p_app.add_argument("--run-config", dest="run_config", action="append", default=[], metavar='"KEY=VALUE ..."',
                       help="override keys of [tool.flwr.app.config], as `flwr run --run-config` does: several "
                            "pairs in one string, repeatable, or one TOML file")
    p_app.add_argument("--num-supernodes", type=int, default=None,
                       help="number of simulated SuperNodes (default: the app's federation, else 10)")
    p_app.add_argument("--executor", choices=("serial", "ray"), default="serial")
    p_app.add_argument("--num-actors", type=int, default=0, help="Ray actors (0 = cores)")
    p_app.add_argument("--seed", type=int, default=0, help="seeds node sampling (Flower's `random`)")
    p_app.add_argument("--out", default=None, help="results folder")
    p_app.add_argument("--verbose", action="store_true", help="show Flower's INFO logs")
    p_app.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p_app.add_argument("--system", default=None, metavar="SCENARIO",
                       help="simulate the [devices], [network] and [round] sections of this scenario file or preset "
                            "(e.g. stragglers, mobile, lossy)")

    p_sweep = sub.add_parser("sweep", help="run every cell of a scenario's [sweep] grid (resumable)")
    p_sweep.add_argument("scenario", help="a scenario .toml with a [sweep] table, or a preset name")
    p_sweep.add_argument("--out", default=None, help="sweep folder (default: results/<name>-sweep)")
    p_sweep.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE")
    p_sweep.add_argument("--parallel", type=int, default=None, help="cells at once (default: sweep.parallel or cores)")
    p_sweep.add_argument("--yes", action="store_true", help="run even if the grid exceeds sweep.max_cells")
    p_sweep.add_argument("--target", type=float, default=None, help="target accuracy for the report (default: sweep.target)")

    for name, text in (("report", "an HTML report and summary.csv comparing run or sweep folders"),
                       ("compare", "a table in the terminal comparing run or sweep folders")):
        p = sub.add_parser(name, help=text)
        p.add_argument("dirs", nargs="+", help="run folders and/or sweep folders")
        p.add_argument("--target", type=float, default=None,
                       help="target accuracy (rounds / virtual time to reach it); default: the sweep's, else 0.8")
        if name == "report":
            p.add_argument("--out", default=None, help="HTML file (default: <first DIR>/report.html)")

    sub.add_parser("presets", help="list the shipped scenario presets, each with its one-line description")

    p_traces = sub.add_parser("traces", help="device traces: import FedScale's into fedsim's CSV formats")
    traces_sub = p_traces.add_subparsers(dest="traces_command", required=True)
    p_import = traces_sub.add_parser("import", help="FedScale's capacity / availability pickles -> devices.csv, "
                                                    "availability.csv and system.toml in OUT")
    p_import.add_argument("--capacity", default=None, metavar="PKL", help="FedScale's client_device_capacity")
    p_import.add_argument("--availability", default=None, metavar="PKL", help="FedScale's client_behave_trace")
    p_import.add_argument("--out", required=True, metavar="DIR", help="folder for the converted files")
    return parser


def write_report(dirs: list[str], target: float | None, out: str | None) -> tuple[Path, Path]:
    from fedsim import compare, htmlreport

    loaded = compare.load(dirs)
    rows = compare.summarize(loaded, compare.check_target(target if target is not None else loaded.target))
    html_path = Path(out) if out else Path(dirs[0]) / "report.html"
    html_path.parent.mkdir(parents=True, exist_ok=True)
    htmlreport.write(loaded, rows, html_path, dirs)
    return html_path, compare.write_csv(rows, html_path.with_name("summary.csv"))


_TERMINATED: list[bool] = []


def _on_sigterm(signum: int, frame: object) -> None:
    _TERMINATED.append(True)  # remembered: libraries may re-raise a plain KeyboardInterrupt
    from fedsim.interrupt import Terminated

    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
        if _STARTING:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C: KeyboardInterrupt, a clean stop
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s fedsim: %(message)s"))
    fedsim_log = logging.getLogger("fedsim")
    if not fedsim_log.handlers:
        fedsim_log.addHandler(handler)
    fedsim_log.setLevel(logging.INFO)
    try:
        if args.command == "presets":
            from fedsim.config import preset_description

            names = list_presets()
            width = max(map(len, names), default=0)
            for name in names:
                print(f"{name:<{width}}  {preset_description(name)}".rstrip())
            return 0
        if args.command == "traces":
            from fedsim.scenarios.traces import convert

            done = convert(args.capacity, args.availability, args.out)
            print(", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in done.items()))
            print(f"use it: fedsim run SCENARIO with the sections of {Path(args.out) / 'system.toml'} "
                  f"(or fedsim run-app APP --system {Path(args.out) / 'system.toml'})")
            return 0
        if args.command == "run":
            from fedsim.runner import resume, run

            if args.accept and args.resume is None:
                raise ConfigError("--resume-with-changes", ",".join(args.accept), "only goes with --resume DIR")
            if args.resume is not None:
                if args.scenario or args.out:
                    raise ConfigError("--resume", args.resume, "takes no SCENARIO or --out (the run folder holds its "
                                                               "config; --set with --resume-with-changes edits it)")
                accept = [f for item in args.accept for f in item.split(",")]
                result = resume(args.resume, overrides=args.overrides, accept=accept)
            elif args.scenario is None:
                raise ConfigError("SCENARIO", None, "required: a scenario .toml or a preset name (or --resume DIR)")
            else:
                result = run(resolve_scenario(args.scenario), out_dir=args.out, overrides=args.overrides)
            s = result.summary
            acc = s.get("final_central_acc")
            print(f"{s['name']}: {s['rounds']} rounds, final centralized accuracy "
                  f"{'n/a' if acc is None else f'{acc:.4f}'}, {s['client_failures']} client failures; "
                  f"results in {result.out_dir}")
            if result.stopped is not None:
                print(f"fedsim: run stopped: {one_line(result.stopped)}", file=sys.stderr)
                return 3
            return 0
        if args.command == "deploy-app":
            from fedsim.config import load_config
            from fedsim.deployment import commands, write_app

            cfg = load_config(resolve_scenario(args.scenario), args.overrides)
            path = write_app(cfg, args.out, args.port)
            print(f"wrote {path}; one SuperNode per client ({cfg.data.num_clients}):")
            for line in commands(cfg, args.out, args.port):
                print("  " + line)
            return 0
        if args.command == "check":
            from fedsim.config import load_toml
            from fedsim.runner import check

            path = resolve_scenario(args.scenario)
            if "sweep" in load_toml(path):  # every cell: its config, and each distinct set-up (seeds aside)
                from fedsim.sweeps import check_cells, load_sweep

                sweep = load_sweep(path, args.overrides)
                distinct = check_cells(sweep)
                name = sweep.base.get("run", {}).get("name", "sweep")
                print(f"{name}: {len(sweep.cells)} cells ok ({distinct} distinct set-ups checked; "
                      f"`fedsim sweep` runs them)")
                return 0
            info = check(path, args.overrides)
            print(f"{info['name']}: ok - {info['clients']} clients ({info['smallest_client']}-{info['largest_client']} "
                  f"examples each, {info['examples']} in all), model {info['model']}, strategy {info['strategy']}, "
                  f"{info['rounds']} rounds")
            return 0
        if args.command == "sweep":
            from fedsim.sweeps import (
                SweepInterrupted,
                default_out,
                load_sweep,
                run_sweep,
            )

            if args.parallel is not None and args.parallel < 1:
                raise ConfigError("--parallel", args.parallel, "must be a number of processes >= 1")
            sweep = load_sweep(resolve_scenario(args.scenario), args.overrides)
            out = Path(args.out) if args.out else default_out(sweep)

            def on_cell(cell: dict) -> None:
                extra = f": {cell['error']}" if cell["error"] else ""
                print(one_line(f"  {cell['id']} [{cell['label']}, seed {cell['seed']}] {cell['status']}{extra}"),
                      flush=True)

            try:
                manifest = run_sweep(sweep, out, yes=args.yes, parallel=args.parallel, on_cell=on_cell)
            except SweepInterrupted as exc:
                return _say_sweep_interrupted(exc, args)
            done = sum(c["status"] == "done" for c in manifest["cells"])
            failed = sum(c["status"] == "failed" for c in manifest["cells"])
            html_path, csv_path = write_report([str(out)], args.target, None)
            print(f"sweep: {done} done, {failed} failed of {len(manifest['cells'])} cells; report {html_path}, {csv_path}")
            return 0
        if args.command == "report":
            html_path, csv_path = write_report(args.dirs, args.target, args.out)
            print(f"report: {html_path}\nsummary: {csv_path}")
            return 0
        if args.command == "compare":
            from fedsim import compare

            loaded = compare.load(args.dirs)
            target = compare.check_target(args.target if args.target is not None else loaded.target)
            compare.print_table(compare.summarize(loaded, target))
            return 0
        if args.command == "run-app":
            from fedsim.runapp import run_app

            res = run_app(args.path, run_config=args.run_config, num_supernodes=args.num_supernodes,
                          executor=args.executor, num_actors=args.num_actors, seed=args.seed, out_dir=args.out,
                          verbose=args.verbose, plots=not args.no_plots, system=args.system,
                          progress=sys.stderr.isatty())
            print(f"{res.summary['app']}: {res.summary['rounds']} rounds on {res.summary['num_supernodes']} "
                  f"simulated SuperNodes; results in {res.out_dir}")
            return 0
    except ConfigError as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        frames = getattr(exc, "user_frames", "")
        if frames:  # the user's own code raised: their frames only, below the one line
            print("your code's traceback (most recent call last):\n" + frames.rstrip(), file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        from fedsim.interrupt import RunInterrupted

        if isinstance(exc, RunInterrupted):
            return _say_interrupted(exc)
        if _TERMINATED:
            print("fedsim: terminated (SIGTERM); results written so far are kept", file=sys.stderr)
            return 143
        print("fedsim: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:
        if exc.code == signal.SIGTERM:  # Ray's own SIGTERM handler, while ray.init was starting Ray
            print("fedsim: terminated (SIGTERM) while Ray was starting", file=sys.stderr)
            return 143
        raise
    return 1


def _say_sweep_interrupted(exc: KeyboardInterrupt, args: argparse.Namespace) -> int:
    """A sweep stopped by Ctrl-C / SIGTERM: its cells' states, and the command that resumes it."""
    cells = exc.manifest["cells"]
    counts = {s: sum(c["status"] == s for c in cells) for s in ("done", "failed", "interrupted", "pending")}
    again = " ".join(["fedsim sweep", args.scenario, *(f"--set {o}" for o in args.overrides), "--out", str(exc.out_dir)])
    what = "terminated (SIGTERM)" if exc.signum == signal.SIGTERM else "interrupted"
    print(one_line(f"fedsim: sweep {what}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
                   + f" of {len(cells)} cells (states in {exc.out_dir / 'sweep.json'}); resume: {again}"),
          file=sys.stderr)
    return 128 + exc.signum


def _say_interrupted(exc: KeyboardInterrupt) -> int:
    """The one line of a run stopped by Ctrl-C / SIGTERM, with the command that resumes it."""
    what = "terminated (SIGTERM)" if exc.signum == signal.SIGTERM else "interrupted"
    where = ""
    if exc.out_dir is not None:
        saved = (f"checkpoint at round {exc.checkpoint_round}" if exc.checkpoint_round
                 else "no checkpoint yet: a resume starts over")
        where = f"; results so far in {exc.out_dir} ({saved}); resume: fedsim run --resume {exc.out_dir}"
    print(one_line(f"fedsim: {what} after round {exc.rounds_done}{where}"), file=sys.stderr)
    return 128 + exc.signum


if __name__ == "__main__":
    sys.exit(main())
