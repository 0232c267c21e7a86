"""``fedsim.run(config) -> RunResult``: a scenario end to end on a `SimulationGrid`."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord, MetricRecord
from flwr.serverapp.strategy import Result, Strategy

from fedsim.clients import lora
from fedsim.clients.codecs import build_pipeline
from fedsim.clients.models import build_model, init_model
from fedsim.clients.runconfig import to_run_config
from fedsim.clients.trainer import evaluate
from fedsim.engine import checkpoint
from fedsim import report
from fedsim.core import seeding
from fedsim.core.errors import ConfigError
from fedsim.config import Config, load_config
from fedsim.engine.executors import AppRef, make_executor
from fedsim.engine.grid import SimulationGrid
from fedsim.engine.metrics import Recorder
from fedsim.progress import RoundProgress
from fedsim.engine.system import SystemModel
from fedsim.scenarios.federation import federated_data
from fedsim.strategies.registry import build_strategy

log = logging.getLogger("fedsim")


@dataclasses.dataclass
class RunResult:
    """What a run produced. ``history`` holds the metrics.jsonl records (round 0 = initial model)."""

    config: Config
    history: list[dict[str, Any]]
    arrays: ArrayRecord
    summary: dict[str, Any]
    out_dir: Path | None
    paths: dict[str, Path]
    flower_result: Result

    def final(self, key: str) -> Any:
        return next((r[key] for r in reversed(self.history) if r.get(key) is not None), None)


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
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(cfg.report.out_dir) / f"{cfg.run.name}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def make_app_ref(cfg: Config) -> tuple[AppRef, dict[str, Any]]:
    """The ClientApp to run and the run_config its Context carries."""
    extra: dict[str, Any] = {"seed": cfg.run.seed}
    if cfg.faults.enabled:
        extra["faults"] = cfg.faults
    if cfg.byzantine.enabled:
        from fedsim.scenarios.byzantine import malicious_clients

        extra.update(byzantine=cfg.byzantine,
                     malicious=malicious_clients(cfg.byzantine, cfg.data.num_clients, cfg.run.seed))
    if cfg.client.app == "fedsim":
        from fedsim.strategies.wrappers import CLIENT_MODS

        mod = CLIENT_MODS.get(getattr(cfg.strategy.params, "wrapper", ""), "")
        return AppRef(f"clients.app:app_{mod}" if mod else "fedsim.clients.app:app", **extra), to_run_config(cfg)
    return AppRef(cfg.client.app, paths=(os.getcwd(),), **extra), dict(cfg.client.app_config)


def run(config: Config | str | Path, *, out_dir: str | Path | None = None, overrides: Iterable[str] = (),
        write: bool = True) -> RunResult:
    """Run a scenario. ``config`` is a `Config` or a TOML path; ``overrides`` are ``a.b=c`` edits.

    With ``write`` (default) a results folder is written to ``out_dir`` (default
    ``report.out_dir/<run name>-<timestamp>``).
    """
    cfg = load_config(config, overrides) if isinstance(config, (str, Path)) else config.replace(overrides)
    out = (Path(out_dir) if out_dir is not None else default_out_dir(cfg)) if write else None
    if cfg.run.checkpoint_every and out is None:
        raise ConfigError("run.checkpoint_every", cfg.run.checkpoint_every, "needs a results folder (write=True)")
    return _run(cfg, out, report.RunWriter(out) if out is not None else None, None)


def check(config: Config | str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Validate a scenario as far as a run would before its first round (config, data and
    partitions, model, strategy, system model, ClientApp) without training; a summary."""
    cfg = load_config(config, overrides) if isinstance(config, (str, Path)) else config.replace(overrides)
    with flower_log_level(False, quiet=logging.ERROR):
        data = federated_data(cfg.data, cfg.run.seed)
        init_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes, cfg.run.seed)
        strategy = build_strategy(cfg.strategy.name, cfg.strategy.params)
        if (cfg.run.checkpoint_every and type(strategy).start is not Strategy.start
                and not callable(getattr(strategy, "fedsim_state", None))):
            raise ConfigError("run.checkpoint_every", cfg.run.checkpoint_every,
                              f"strategy {cfg.strategy.name!r} drives its own rounds and cannot be checkpointed")
        SystemModel(cfg.devices, cfg.network, cfg.round, cfg.data.num_clients, cfg.run.seed,
                    local_epochs=cfg.client.local_epochs)
        build_pipeline(cfg.codec)
        make_app_ref(cfg)[0].load()
    size = getattr(data, "client_size", None) or (lambda c: len(data.client_train(c)[1]))
    sizes = [size(c) for c in range(cfg.data.num_clients)]
    return {"name": cfg.run.name, "clients": cfg.data.num_clients, "examples": sum(sizes),
            "smallest_client": min(sizes), "largest_client": max(sizes), "rounds": cfg.run.rounds,
            "strategy": cfg.strategy.name, "model": cfg.model.name}


def resume(out_dir: str | Path) -> RunResult:
    """Continue the run in ``out_dir`` from its last checkpoint; the result equals an uninterrupted run's."""
    out = Path(out_dir)
    if not (out / report.CONFIG).is_file():
        raise ConfigError("--resume", str(out), "is not a run folder (no config.toml)")
    cfg = load_config(out / report.CONFIG)
    ck = checkpoint.load(out)
    writer = report.RunWriter.reopen(out, keep_rounds=ck.round)
    return _run(cfg, out, writer, ck)


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


def _run(cfg: Config, out: Path | None, writer: report.RunWriter | None, ck: Any) -> RunResult:
    seed = cfg.run.seed
    paths: dict[str, Path] = {}

    with flower_log_level(cfg.report.flower_logs), torch_threads(cfg.client.threads):
        data = federated_data(cfg.data, seed)  # validates partitions before anything starts
        spec = lora.lora_params(cfg.codec)
        if spec is not None:  # LoRA-only: the global arrays are the adapters
            server_model = lora.wrap(lora.build_base(cfg, data, spec), spec, seed)
            initial = ArrayRecord(lora.trainable_state(server_model))
        else:
            model = init_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes, seed)
            if cfg.data.sharing.enabled and cfg.data.sharing.warmup_epochs > 0:
                warm_up(model, data, cfg)
            initial = ArrayRecord(model.state_dict())
            server_model = build_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes)
        with flower_log_level(cfg.report.flower_logs, quiet=logging.ERROR):  # e.g. "fraction_evaluate is 0"
            strategy = build_strategy(cfg.strategy.name, cfg.strategy.params)
        own_loop = type(strategy).start is not Strategy.start
        if cfg.run.checkpoint_every and own_loop and not callable(getattr(strategy, "fedsim_state", None)):
            raise ConfigError("run.checkpoint_every", cfg.run.checkpoint_every,
                              f"strategy {cfg.strategy.name!r} drives its own rounds (start() overridden) and does "
                              "not expose fedsim_state() / fedsim_load_state(); set 0")
        app_ref, run_config = make_app_ref(cfg)
        if writer is not None:
            paths["config"] = writer.write_config(cfg.to_dict()) if ck is None else out / report.CONFIG

        progress = RoundProgress(cfg.run.rounds, cfg.run.name, enabled=cfg.report.progress)
        tracker = None
        if out is not None and (cfg.report.tensorboard or cfg.report.mlflow):
            from fedsim.tracking import Tracker, flatten

            tracker = Tracker(out, cfg.run.name, flatten(cfg.to_dict()), cfg.report.tensorboard, cfg.report.mlflow, cfg.report.mlflow_uri)

        def on_record(record: dict[str, Any]) -> None:
            if writer is not None:
                writer.append(record)
            if tracker is not None:
                tracker.log(record)
            for f in record["failures"]:
                log.warning("round %d: client %d failed in %s: %s", record["round"], f["partition_id"],
                            f["phase"], f["reason"])
            progress.update(record)

        recorder = Recorder(on_record=on_record)
        start_round = 0
        if ck is not None:
            start_round = ck.round
            recorder.records = list(writer.kept) if writer is not None else []
        if spec is not None and spec.mode == "fedit":
            recorder.train_metrics.append(lambda replies: {"lora_aggregation_error": lora.aggregation_error(replies)})
        # The one-time distribution of the shared set is charged to round 0.
        recorder.pending["bytes_shared"] = data.shared_bytes()
        executor = make_executor(cfg.executor.name, **_executor_kwargs(cfg))
        system = SystemModel(cfg.devices, cfg.network, cfg.round, cfg.data.num_clients, seed,
                             local_epochs=cfg.client.local_epochs)
        grid = SimulationGrid(cfg.data.num_clients, executor, seed=seed, observer=recorder.on_exchange, system=system,
                              codec=build_pipeline(cfg.codec))
        if ck is not None:
            grid.restore(ck.grid, ck.nodes, ck.codec_state, ck.messages)
            checkpoint.restore_strategy(strategy, ck)
            initial = ck.arrays
            recorder.resume_at(grid.clock.now)
            if own_loop:  # it resumes its own loop (and counts its own rounds)
                start_round = 0
            else:
                shift_rounds(strategy, start_round)
        recorder.clock = grid.clock
        if cfg.server.reduce_replies and not cfg.probe.enabled:
            from fedsim.engine.streaming import reducible

            if reducible(strategy):
                grid.reduce_by = strategy.weighted_by_key
        executor.start(app_ref, grid.run.run_id, run_config)
        prober = make_prober(cfg, data, server_model, spec is not None, out) if cfg.probe.enabled else None
        if prober is not None:
            grid.probe = prober.collect

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            if ck is not None and server_round == 0:
                return None  # resumed: round `start_round` was recorded before the interruption
            server_round += start_round
            due = server_round % cfg.server.eval_every == 0 or server_round == cfg.run.rounds
            central = None
            if cfg.server.centralized_eval and due:
                if spec is not None:
                    lora.load_trainable(server_model, arrays)
                else:
                    server_model.load_state_dict(arrays.to_torch_state_dict())
                central = evaluate(server_model, data.server_x, data.server_y)
            if prober is not None and server_round > 0:
                recorder.pending.update(prober.run_round(server_round, executor))
            extra = getattr(strategy, "round_metrics", None)  # e.g. FedBuff's staleness statistics
            if isinstance(extra, dict) and server_round > 0:
                recorder.pending.update({f"strategy_{k}": v for k, v in extra.items()})
            recorder.close_round(server_round, central)
            every = cfg.run.checkpoint_every
            if every and out is not None and server_round > 0 and server_round % every == 0:
                counters, nodes, codec_state, messages = grid.checkpoint_state()
                checkpoint.save(out, server_round, arrays, strategy, nodes, counters, codec_state, messages=messages)
            if central is None:
                return None
            return MetricRecord({"loss": central[0], "accuracy": central[1]})

        try:
            with progress:
                seeding.seed_python_random(seed, 0, "start")
                # Under the deadline policies the timeout is the round's virtual deadline.
                timeout = cfg.round.deadline if cfg.round.deadline is not None else cfg.server.timeout
                if cfg.run.rounds > start_round:
                    result = strategy.start(grid=grid, initial_arrays=initial, num_rounds=cfg.run.rounds - start_round,
                                            timeout=timeout, evaluate_fn=evaluate_fn)
                else:  # resumed after the last round's checkpoint: nothing left to run
                    result = Result(arrays=initial)
        finally:
            executor.shutdown()
            if tracker is not None:
                tracker.close()
        recorder.flush()  # a strategy with its own start() may not call evaluate_fn every round

    summary = {"name": cfg.run.name, "seed": seed, "executor": cfg.executor.name,
               "strategy": cfg.strategy.name, "dataset": cfg.data.dataset.name,
               "num_clients": cfg.data.num_clients, **report.summarize(recorder.records)}
    if app_ref.malicious:
        summary["malicious_clients"] = sorted(app_ref.malicious)
    if writer is not None and out is not None:
        paths["metrics"] = writer.metrics_path
        paths["summary"] = writer.write_summary(summary)
        if cfg.report.plots:
            for p in report.plot_curves(recorder.records, out) + report.plot_system(recorder.records, out):
                paths[p.stem] = p
            paths["label_distribution"] = report.plot_label_distribution(data.label_counts(), out)
    final_arrays = result.arrays if result.arrays is not None else initial
    if writer is not None and out is not None:
        paths["model"] = report.write_model(out, final_arrays)
    return RunResult(config=cfg, history=recorder.records, arrays=final_arrays, summary=summary,
                     out_dir=out, paths=paths, flower_result=result)


def make_prober(cfg: Config, data: Any, server_model: torch.nn.Module, lora_mode: bool, out: Path | None) -> Any:
    """The attack probe: the attacker builds the same architecture (adapters included)."""
    import copy

    from fedsim.scenarios.attacks.probe import ProbeRunner

    if lora_mode:
        template = copy.deepcopy(server_model)

        def build() -> torch.nn.Module:
            return copy.deepcopy(template)
    else:
        def build() -> torch.nn.Module:
            return build_model(cfg.model.name, cfg.model.params, data.input_shape, data.num_classes)

    runner = ProbeRunner(cfg.probe, seed=cfg.run.seed, data=data, client_cfg=cfg.client, build_model=build,
                         lora=lora_mode, out_dir=out)
    runner.check_model()  # an attack that cannot work on this model fails before any training
    return runner


def warm_up(model: torch.nn.Module, data: Any, cfg: Config) -> None:
    """Zhao et al.'s server warm-up: train the initial global model on the shared set G."""
    from fedsim.clients import trainer

    s = cfg.data.sharing
    x, y = data.shared()
    settings = trainer.TrainSettings(epochs=s.warmup_epochs, batch_size=cfg.client.batch_size,
                                     lr=s.warmup_lr or cfg.client.lr, momentum=cfg.client.momentum,
                                     weight_decay=cfg.client.weight_decay)
    trainer.train(model, x, y, settings, seeding.torch_generator(cfg.run.seed, 0, seeding.SERVER, "warm-up"))


def _executor_kwargs(cfg: Config) -> dict[str, Any]:
    if cfg.executor.name == "ray":
        from fedsim.engine.executors.ray import Tier

        r = cfg.ray
        return dict(address=r.address, num_actors=r.num_actors, cpus_per_actor=r.cpus_per_actor,
                    client_timeout=r.client_timeout, max_retries=r.max_retries, threads=cfg.client.threads,
                    client_memory_mb=r.client_memory_mb, gpus_per_actor=r.gpus_per_actor,
                    memory_mb_per_actor=r.memory_mb_per_actor, num_clients=cfg.data.num_clients,
                    tiers=[Tier(t.name, t.clients[0], t.clients[1], t.num_actors, t.cpus, t.gpus, t.memory_mb)
                           for t in r.tiers])
    if cfg.executor.name == "vectorized":
        return dict(threads=cfg.client.threads, chunk=cfg.executor.chunk)
    return dict(threads=cfg.client.threads)
