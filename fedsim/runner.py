"""``fedsim.run(config) -> RunResult``: a scenario end to end on a `SimulationGrid`.

A run is: the set-up (`fedsim.runsetup.prepare`), the engine (executor + grid +
system model), observers (metrics.jsonl, tracking, the progress bar, the stop check),
the strategy's own round loop with `RoundEnd` as its ``evaluate_fn``, then the results
folder (summary, plots, the final model).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import signal
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result

from fedsim import interrupt, report
from fedsim.clients.codecs import build_pipeline
from fedsim.config import Config, load_config
from fedsim.core import seeding
from fedsim.core.errors import ConfigError
from fedsim.engine import checkpoint
from fedsim.engine.executors import make_executor
from fedsim.engine.executors.guard import ClientTimeout
from fedsim.engine.grid import SimulationGrid, expects_model_replies
from fedsim.engine.metrics import Recorder
from fedsim.engine.system import SystemModel
from fedsim.progress import RoundProgress
from fedsim.runsetup import (
    RunSetup,
    check_checkpointable,
    checkpointable,
    make_app_ref,
    prepare,
)

log = logging.getLogger("fedsim")


@dataclasses.dataclass
class RunResult:
    """What a run produced. ``history`` holds the metrics.jsonl records (round 0 = initial model);
    ``arrays`` the final global model (never empty: the last good one if nothing aggregated);
    ``flower_result`` Flower's own ``Result`` of ``Strategy.start`` (its per-round metric records);
    ``stopped`` the reason the run stopped early, or None. An interrupted run raises
    `fedsim.interrupt.RunInterrupted` instead (its folder resumes it)."""

    config: Config
    history: list[dict[str, Any]]
    arrays: ArrayRecord
    summary: dict[str, Any]
    out_dir: Path | None
    paths: dict[str, Path]
    flower_result: Result
    stopped: str | None = None

    def final(self, key: str) -> Any:
        return next((r[key] for r in reversed(self.history) if r.get(key) is not None), None)


class RunStopped(Exception):
    """The run cannot make progress (raised from a round's end; everything so far is kept)."""


@contextlib.contextmanager
def flower_log_level(verbose: bool, quiet: int = logging.WARNING) -> Iterator[None]:
    """Flower logs every round at INFO; unless ``verbose``, show only ``quiet`` and above."""
    logger = logging.getLogger("flwr")
    old = logger.level
    if not verbose:
        logger.setLevel(quiet)
    try:
        yield
    finally:
        logger.setLevel(old)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def default_out_dir(cfg: Config) -> Path:
    """``report.out_dir/<run.name>-<time>`` (``run.name`` is one folder name; see `check_name`)."""
    parent = Path(cfg.report.out_dir)
    if parent.exists() and not parent.is_dir():
        raise ConfigError("report.out_dir", cfg.report.out_dir, "is a file, not a folder")
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = parent / f"{cfg.run.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _config(config: Config | str | Path, overrides: Iterable[str]) -> Config:
    return load_config(config, overrides) if isinstance(config, (str, Path)) else config.replace(overrides)


def run(config: Config | str | Path, *, out_dir: str | Path | None = None, overrides: Iterable[str] = (),
        write: bool = True) -> RunResult:
    """Run a scenario. ``config`` is a `Config`, a TOML path or a preset name; ``overrides``
    are ``a.b=c`` edits.

    With ``write`` (default) a results folder is written to ``out_dir`` (default
    ``report.out_dir/<run name>-<timestamp>``).
    """
    cfg = _config(config, overrides)
    out = (Path(out_dir) if out_dir is not None else default_out_dir(cfg)) if write else None
    if cfg.run.checkpoint_every and out is None:
        raise ConfigError("run.checkpoint_every", cfg.run.checkpoint_every, "needs a results folder (write=True)")
    return _run(cfg, out, report.RunWriter(out) if out is not None else None, None)


def check(config: Config | str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Validate a scenario as far as a run would before its first round (config, plug-ins,
    data and partitions, model, strategy, system model, ClientApp) without training; a summary."""
    cfg = _config(config, overrides)
    with flower_log_level(False, quiet=logging.ERROR):
        setup = prepare(cfg)
        assert setup.strategy is not None
        check_checkpointable(cfg, setup.strategy)
        _system(cfg)
        build_pipeline(cfg.codec)
        make_app_ref(cfg)[0].load()
        if cfg.probe.enabled:
            make_prober(cfg, setup, None)
    data = setup.data
    size = getattr(data, "client_size", None) or (lambda c: len(data.client_train(c)[1]))
    sizes = [size(c) for c in range(cfg.data.num_clients)]
    return {"name": cfg.run.name, "clients": cfg.data.num_clients, "examples": sum(sizes),
            "smallest_client": min(sizes), "largest_client": max(sizes), "rounds": cfg.run.rounds,
            "strategy": cfg.strategy.name, "model": cfg.model.name, "dataset": cfg.data.dataset.name}


def resume(out_dir: str | Path, overrides: Iterable[str] = (), accept: Iterable[str] = ()) -> RunResult:
    """Continue the run in ``out_dir`` from its last checkpoint; the result equals an
    uninterrupted run's. The checkpoint is verified (schema, digests) and the folder's
    scenario (with ``overrides``) must equal the one the checkpoint was written by, except
    the fields (or sections) named in ``accept`` (see `fedsim.resuming`)."""
    from fedsim import resuming

    out = Path(out_dir)
    if not (out / report.CONFIG).is_file():
        raise ConfigError("--resume", str(out), "is not a run folder (no config.toml)")
    cfg = load_config(out / report.CONFIG, overrides)
    if not (out / checkpoint.FILE).is_file() and _interrupted_before_a_save(out):
        log.warning("%s was interrupted before its first checkpoint: the run starts over in it", out)
        for name in (report.METRICS, report.SUMMARY):
            (out / name).unlink(missing_ok=True)
        return _run(cfg, out, report.RunWriter(out), None)
    ck = checkpoint.load(out)
    changed = resuming.verify(ck.scenario, cfg.to_dict(), cfg.run.rounds, ck.round, accept)
    writer = report.RunWriter.reopen(out, keep_rounds=ck.round)
    if changed:
        writer.write_config(cfg.to_dict())
        for c in changed:
            log.warning("resuming with a change: %s", c.describe())
    result = _run(cfg, out, writer, ck)
    if changed and writer is not None:
        result.summary["resumed_with_changes"] = {c.field: [c.old, c.new] for c in changed}
        writer.write_summary(result.summary)
    return result


def _interrupted_before_a_save(out: Path) -> bool:
    """The folder's run was interrupted (or killed) and never saved a checkpoint."""
    summary = report.read_summary(out)
    if summary is None:
        return True  # no summary: the run never finished
    return summary.get("status") == report.INTERRUPTED and not summary.get("checkpoint_round")


ROUND_METHODS = ("configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate")


def shift_rounds(strategy: Any, offset: int) -> None:
    """Resume: ``start`` counts rounds from 1 again; the strategy's methods see ``offset + r``.

    The methods are wrapped on the instance (``start`` calls them through ``self``), so
    messages carry the true ``server-round`` and per-round seeds are unchanged.
    """
    for name in ROUND_METHODS:
        method = getattr(strategy, name)

        def shifted(server_round: int, *args: Any, _m: Any = method, **kwargs: Any) -> Any:
            return _m(server_round + offset, *args, **kwargs)

        setattr(strategy, name, shifted)


# ------------------------------------------------------------------ the stop check
#: Exception types in a client's error that mean the scenario cannot work (not a random fault).
CONFIG_FAILURES = ("ConfigError", "ModuleNotFoundError", "ImportError")


class StopCheck:
    """Stops a run that cannot work: every training client of a round failed with the same
    configuration error, or ``max_empty_rounds`` rounds in a row aggregated nothing."""

    def __init__(self, max_empty_rounds: int) -> None:
        self.max_empty = max_empty_rounds
        self.empty = 0

    def __call__(self, record: dict[str, Any]) -> None:
        if record["round"] == 0 or record["clients_sampled"] == 0:
            return
        failures = [f for f in record["failures"] if f["phase"].startswith("train")]
        if record["clients_replied"] == 0 and failures:
            first = failures[0]["reason"]
            if first.split(":", 1)[0] in CONFIG_FAILURES and all(f["reason"] == first for f in failures):
                raise RunStopped(f"round {record['round']}: every client failed with the same configuration error: "
                                 f"{first}")
        self.empty = self.empty + 1 if record["clients_replied"] == 0 else 0
        if self.max_empty and self.empty >= self.max_empty:
            why = f"; first client error: {failures[0]['reason']}" if failures else ""
            raise RunStopped(f"no training reply was aggregated in {self.empty} rounds in a row "
                             f"(rounds {record['round'] - self.empty + 1}-{record['round']}; "
                             f"server.max_empty_rounds = {self.max_empty}){why}")


# ------------------------------------------------------------------ the round's end
class RoundEnd:
    """The ``evaluate_fn`` Flower's ``Strategy.start`` calls after every round (and before
    the first): centralized evaluation, attack probes, strategy metrics, the round's
    record, checkpoints; it remembers the last non-empty global model."""

    def __init__(self, setup: RunSetup, recorder: Recorder, grid: SimulationGrid, executor: Any, prober: Any,
                 out: Path | None, start_round: int, resumed: bool, ledger: Any = None,
                 schedule: checkpoint.Schedule | None = None, stop: interrupt.StopRequest | None = None) -> None:
        self.ledger = ledger  # privacy accounting (fedsim.privacy.Ledger), when a DP mechanism runs
        self.setup = setup
        self.cfg = setup.cfg
        self.recorder = recorder
        self.grid = grid
        self.executor = executor
        self.prober = prober
        self.out = out
        self.start_round = start_round
        self.resumed = resumed
        self.last_good: ArrayRecord = setup.initial
        self.schedule = schedule or checkpoint.Schedule(0)
        self.stop = stop

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if len(arrays) > 0:
            self.last_good = arrays
        if self.resumed and server_round == 0:
            return None  # round `start_round` was recorded before the interruption
        server_round += self.start_round
        cfg = self.cfg
        due = server_round % cfg.server.eval_every == 0 or server_round == cfg.run.rounds
        central = self.setup.evaluate(arrays) if cfg.server.centralized_eval and due and len(arrays) else None
        if self.prober is not None and server_round > 0:
            self.recorder.pending.update(self.prober.run_round(server_round, self.executor))
        extra = getattr(self.setup.strategy, "round_metrics", None)  # e.g. FedBuff's staleness statistics
        if isinstance(extra, dict) and server_round > 0:
            self.recorder.pending.update({f"strategy_{k}": v for k, v in extra.items()})
        if self.ledger is not None:
            if server_round > 0:
                self.ledger.record(*self.recorder.open_releases())
            self.recorder.pending.update(self.ledger.epsilon())
        self.recorder.close_round(server_round, central)
        stopping = self.stop is not None and self.stop.requested and server_round < cfg.run.rounds
        if stopping:
            self.stop.cancel()  # the round's end is reached: no need to force the stop
        if self.out is not None and (self.schedule.due(server_round) or (stopping and server_round > 0)):
            self.save(server_round, arrays)
        if stopping:
            raise KeyboardInterrupt()
        if self.ledger is not None and server_round < cfg.run.rounds:
            why = self.ledger.over_budget()
            if why is not None:
                raise RunStopped(why)
        if central is None:
            return None
        return MetricRecord({"loss": central[0], "accuracy": central[1]})

    def save(self, server_round: int, arrays: ArrayRecord) -> None:
        assert self.out is not None
        start = time.perf_counter()
        counters, nodes, codec_state, messages = self.grid.checkpoint_state()
        if self.ledger is not None:
            counters["privacy"] = self.ledger.state()
        checkpoint.save(self.out, server_round, arrays, self.setup.strategy, nodes, counters, codec_state,
                        messages=messages, scenario=self.cfg.to_dict())
        self.schedule.saved(server_round, time.perf_counter() - start)


# ------------------------------------------------------------------ the run
def _observers(cfg: Config, out: Path | None, writer: report.RunWriter | None, progress: RoundProgress
               ) -> tuple[Recorder, Any]:
    """The recorder, whose each closed round goes to metrics.jsonl, tracking, the log, the
    progress bar and the stop check (in that order: a stop keeps the round it saw)."""
    tracker = None
    if out is not None and (cfg.report.tensorboard or cfg.report.mlflow):
        from fedsim.tracking import Tracker, flatten

        tracker = Tracker(out, cfg.run.name, flatten(cfg.to_dict()), cfg.report.tensorboard, cfg.report.mlflow,
                          cfg.report.mlflow_uri)
    stop = StopCheck(cfg.server.max_empty_rounds)

    def on_record(record: dict[str, Any]) -> None:
        if writer is not None:
            writer.append(record)
        if tracker is not None:
            tracker.log(record)
        for f in record["failures"]:
            log.warning("round %d: client %d failed in %s: %s", record["round"], f["partition_id"], f["phase"],
                        f["reason"])
        progress.update(record)
        stop(record)

    return Recorder(on_record=on_record), tracker


def _system(cfg: Config) -> SystemModel:
    """The system model; fedsim's own client settings let it count time-budget partial work."""
    return SystemModel(cfg.devices, cfg.network, cfg.round, cfg.data.num_clients, cfg.run.seed,
                       local_epochs=cfg.client.local_epochs, energy=cfg.energy,
                       client=cfg.client if cfg.client.app == "fedsim" else None)


def _engine(cfg: Config, recorder: Recorder) -> tuple[Any, SimulationGrid]:
    executor = make_executor(cfg.executor.name, **_executor_kwargs(cfg))
    system = _system(cfg)
    grid = SimulationGrid(cfg.data.num_clients, executor, seed=cfg.run.seed, observer=recorder.on_exchange,
                          system=system, codec=build_pipeline(cfg.codec))
    grid.selection = cfg.selection.make(cfg.round.deadline)
    return executor, grid


def _run(cfg: Config, out: Path | None, writer: report.RunWriter | None, ck: Any) -> RunResult:
    paths: dict[str, Path] = {}
    with flower_log_level(cfg.report.flower_logs), torch_threads(cfg.client.threads):
        with flower_log_level(cfg.report.flower_logs, quiet=logging.ERROR):  # e.g. "fraction_evaluate is 0"
            setup = prepare(cfg)
        strategy = setup.strategy
        assert strategy is not None
        check_checkpointable(cfg, strategy)
        app_ref, run_config = make_app_ref(cfg)
        if writer is not None:
            paths["config"] = writer.write_config(cfg.to_dict()) if ck is None else writer.out / report.CONFIG
        progress = RoundProgress(cfg.run.rounds, cfg.run.name, enabled=cfg.report.progress)
        recorder, tracker = _observers(cfg, out, writer, progress)
        if setup.adapters is not None and setup.adapters.mode == "fedit":
            from fedsim.clients import lora

            recorder.train_metrics.append(lambda replies: {"lora_aggregation_error": lora.aggregation_error(replies)})
        recorder.pending["bytes_shared"] = setup.data.shared_bytes()  # G's one-time distribution: round 0
        executor, grid = _engine(cfg, recorder)
        initial, start_round = setup.initial, 0
        if ck is not None:
            start_round, initial = _restore(ck, setup, grid, recorder, writer)
        recorder.clock = grid.clock
        grid.model_replies = expects_model_replies(strategy)
        grid.max_update_norm = cfg.server.max_update_norm
        if cfg.server.reduce_replies and not cfg.probe.enabled:
            from fedsim.engine.streaming import reducible

            if reducible(strategy):
                grid.reduce_by = strategy.weighted_by_key
        executor.start(app_ref, grid.run.run_id, run_config)
        prober = make_prober(cfg, setup, out) if cfg.probe.enabled else None
        if prober is not None:
            grid.probe = prober.collect
        from fedsim.privacy import Ledger

        ledger = Ledger(cfg)
        if ledger.unbounded:
            log.warning("strategy.wrapper.noise_multiplier = 0: the wrapper clips but adds no noise, so the run has "
                        "no differential privacy (privacy_epsilon is infinite, null in metrics.jsonl)")
        if ck is not None and ledger.active:
            ledger.load(ck.grid.get("privacy", {"central_rounds": 0, "per_client": {}}))
        schedule = _schedule(cfg, strategy, out, ck)
        round_end = RoundEnd(setup, recorder, grid, executor, prober, out, 0 if setup.own_loop else start_round,
                             resumed=ck is not None, ledger=ledger if ledger.active else None, schedule=schedule)
        result, stopped, signalled = Result(arrays=initial), None, None
        with interrupt.graceful() as stop:
            round_end.stop = stop
            try:
                with progress:
                    seeding.seed_python_random(cfg.run.seed, 0, "start")
                    # Under the deadline policies the timeout is the round's virtual deadline.
                    timeout = cfg.round.deadline if cfg.round.deadline is not None else cfg.server.timeout
                    left = cfg.run.rounds - (0 if setup.own_loop else start_round)
                    if left > 0:  # (a run resumed after its last round's checkpoint has nothing left)
                        result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=left, timeout=timeout,
                                                evaluate_fn=round_end)
            except (RunStopped, ClientTimeout) as exc:
                stopped = str(exc)
            except KeyboardInterrupt as exc:
                signalled = stop.signum or (signal.SIGTERM if isinstance(exc, interrupt.Terminated) else signal.SIGINT)
            finally:
                executor.shutdown()
                if tracker is not None:
                    tracker.close()
        if signalled is not None:
            raise _interrupted(cfg, recorder, writer, out, schedule.last_round, signalled)
        if stopped is None:
            try:
                recorder.flush()  # a strategy with its own start() may not call evaluate_fn every round
            except RunStopped as exc:
                stopped = str(exc)
    # Flower's Result holds an empty ArrayRecord when nothing was ever aggregated: keep the last good model.
    done = result.arrays if stopped is None and result.arrays is not None and len(result.arrays) > 0 else None
    final = done if done is not None else round_end.last_good
    return _finish(cfg, setup, recorder, app_ref, final, result, stopped, writer, out, paths)


def _schedule(cfg: Config, strategy: Any, out: Path | None, ck: Any) -> checkpoint.Schedule:
    every = cfg.run.checkpoint_every
    if every is None and (out is None or not checkpointable(strategy)):
        every = 0  # the automatic default does without where it cannot save
    schedule = checkpoint.Schedule(every)
    schedule.last_round = ck.round if ck is not None else None
    return schedule


def _summary(cfg: Config, recorder: Recorder) -> dict[str, Any]:
    """What every summary.json starts with: the run's identity, then its records' summary."""
    return {"name": cfg.run.name, "seed": cfg.run.seed, "data_seed": cfg.data_seed,
            "executor": cfg.executor.name, "strategy": cfg.strategy.name, "dataset": cfg.data.dataset.name,
            "num_clients": cfg.data.num_clients, **report.summarize(recorder.records)}


def _interrupted(cfg: Config, recorder: Recorder, writer: report.RunWriter | None, out: Path | None,
                 saved: int | None, signum: int) -> interrupt.RunInterrupted:
    """A signal stopped the run: a summary of the rounds done, marked interrupted (no final
    model, no plots: the run is not over), and the exception that says how to resume."""
    done = recorder.records[-1]["round"] if recorder.records else 0
    if writer is not None:
        summary = {**_summary(cfg, recorder), "status": report.INTERRUPTED, "interrupted_after_round": done,
                   "checkpoint_round": saved}
        writer.write_summary(summary)
    log.warning("run interrupted after round %d%s", done,
                f"; checkpoint at round {saved}" if saved else "; no checkpoint yet (a resume starts over)")
    return interrupt.RunInterrupted(out, done, saved, signum)


def _restore(ck: Any, setup: RunSetup, grid: SimulationGrid, recorder: Recorder,
             writer: report.RunWriter | None) -> tuple[int, ArrayRecord]:
    """A checkpoint's state into the grid, strategy and recorder; (round reached, global arrays)."""
    from fedsim import resuming

    resuming.check_arrays(ck.arrays, setup.initial)
    try:
        grid.restore(ck.grid, ck.nodes, ck.codec_state, ck.messages)
    except Exception as exc:  # noqa: BLE001 - the counters are the checkpoint's (verified, maybe crafted) input
        raise ConfigError("--resume", "checkpoint", f"damaged or crafted checkpoint: grid state unusable "
                                                    f"({type(exc).__name__}: {exc}); refused") from None
    checkpoint.restore_strategy(setup.strategy, ck)
    recorder.records = list(writer.kept) if writer is not None else []
    recorder.resume_at(grid.clock.now)
    if not setup.own_loop:
        shift_rounds(setup.strategy, ck.round)
    return ck.round, ck.arrays


def _finish(cfg: Config, setup: RunSetup, recorder: Recorder, app_ref: Any, final: ArrayRecord, result: Result,
            stopped: str | None, writer: report.RunWriter | None, out: Path | None,
            paths: dict[str, Path]) -> RunResult:
    """The summary, plots and final model of a finished (or stopped) run."""
    summary = {**_summary(cfg, recorder), "status": report.COMPLETED if stopped is None else report.STOPPED}
    if stopped is not None:
        summary["stopped"] = stopped
        log.error("run stopped: %s", stopped)
    if not any(r.get("clients_replied") for r in recorder.records[1:]) and len(recorder.records) > 1:
        summary["model"] = "initial (no training reply was ever aggregated)"
    if app_ref.malicious:
        summary["malicious_clients"] = sorted(app_ref.malicious)
    if writer is not None and out is not None:
        paths["metrics"] = writer.metrics_path
        paths["summary"] = writer.write_summary(summary)
        if cfg.report.plots:
            for p in report.plot_curves(recorder.records, out) + report.plot_system(recorder.records, out):
                paths[p.stem] = p
            paths["label_distribution"] = report.plot_label_distribution(setup.data.label_counts(), out)
        paths["model"] = report.write_model(out, final)
    return RunResult(config=cfg, history=recorder.records, arrays=final, summary=summary, out_dir=out, paths=paths,
                     flower_result=result, stopped=stopped)


def make_prober(cfg: Config, setup: RunSetup, out: Path | None) -> Any:
    """The attack probe: the attacker builds the same architecture (adapters included)
    from the model's description alone, never from data."""
    from fedsim.scenarios.attacks.probe import ProbeRunner

    runner = ProbeRunner(cfg.probe, seed=cfg.run.seed, data=setup.data, client_cfg=cfg.client,
                         build_model=setup.model_builder(), lora=setup.adapters is not None, out_dir=out)
    runner.check_model()  # an attack that cannot work on this model fails before any training
    return runner


def _executor_kwargs(cfg: Config) -> dict[str, Any]:
    if cfg.executor.name == "ray":
        from fedsim.engine.executors.ray import Tier

        r = cfg.ray
        return dict(address=r.address, num_actors=r.num_actors, cpus_per_actor=r.cpus_per_actor,
                    client_timeout=r.client_timeout or cfg.client.timeout_s, max_retries=r.max_retries, threads=cfg.client.threads,
                    client_memory_mb=r.client_memory_mb, gpus_per_actor=r.gpus_per_actor,
                    memory_mb_per_actor=r.memory_mb_per_actor, num_clients=cfg.data.num_clients,
                    host=r.host, start_timeout_s=r.start_timeout_s,
                    tiers=[Tier(t.name, t.clients[0], t.clients[1], t.num_actors, t.cpus, t.gpus, t.memory_mb)
                           for t in r.tiers])
    if cfg.executor.name == "vectorized":
        return dict(threads=cfg.client.threads, chunk=cfg.executor.chunk, timeout_s=cfg.client.timeout_s)
    return dict(threads=cfg.client.threads, timeout_s=cfg.client.timeout_s)
