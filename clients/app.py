"""fedsim's Flower ClientApp: trains and evaluates a registry model on its partition.

It is a plain ``flwr.clientapp.ClientApp``. Everything it needs comes from Flower's
``Context``: ``node_config["partition-id"]`` picks the partition and ``run_config``
carries the client contract (`fedsim.clients.spec.ClientSpec`: seeds, data, model, client
settings, codecs, plug-ins; never the server's sections). Data and the model object are
built once per process and reused across virtual clients and rounds. The strategy's train
``ConfigRecord`` may override ``lr``, ``local-epochs``, ``local-steps``,
``batch-size`` and carry ``proximal-mu`` (FedProx).
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from fedsim.clients import algorithms, apfl, lora, trainer
from fedsim.clients.codecs import MARKER, CodecContext, Pipeline, build_pipeline
from fedsim.clients.codecs.transport import encode_update, load_state, save_state
from fedsim.clients.device import resolve as resolve_device
from fedsim.clients.models import build_model, init_model
from fedsim.clients.state import save_arrays
from fedsim.clients.settings import ClientSection
from fedsim.clients.spec import ClientSpec, from_run_config
from fedsim.scenarios.federation import FederatedData, federated_data
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import LocalDpMod, adaptiveclipping_mod, fixedclipping_mod
from torch import nn

from fedsim.core import keys, seeding
from fedsim.core.records import arrays_of, configs_of, metrics_of

app = ClientApp()
# The same ClientApp behind Flower's client-side DP clipping mods (for the dp_client_* wrappers).
app_fixedclipping = ClientApp(mods=[fixedclipping_mod])
app_adaptiveclipping = ClientApp(mods=[adaptiveclipping_mod])
_APPS = (app, app_fixedclipping, app_adaptiveclipping)


@dataclasses.dataclass
class Runtime:
    """What a process keeps for a run: its spec, data, model and codec chain."""

    spec: ClientSpec
    data: FederatedData
    model: nn.Module
    codec: Pipeline
    lora: bool = False
    device: torch.device = torch.device("cpu")


@functools.lru_cache(maxsize=4)
def _runtime_cached(items: tuple[tuple[str, str], ...]) -> Runtime:
    spec = from_run_config(dict(items))
    data = federated_data(spec.data, spec.data_seed)
    adapters = lora.lora_params(spec.codec)
    if adapters is not None:  # LoRA-only: the frozen base, the same in every process, with adapters
        model = lora.wrap(lora.build_base(spec, data, adapters), adapters, spec.seed)
    else:
        model = build_model(spec.model.name, spec.model.params, data.input_shape, data.num_classes)
    device = resolve_device(spec.client.device)
    return Runtime(spec=spec, data=data, model=model.to(device), codec=build_pipeline(spec.codec),
                   lora=adapters is not None, device=device)


def runtime(context: Context) -> Runtime:
    return runtime_for(context.run_config)


def runtime_for(run_config: Mapping[str, Any]) -> Runtime:
    """The process-wide runtime (spec, data, model) of a run, built once."""
    return _runtime_cached(tuple(sorted((k, str(v)) for k, v in run_config.items())))


def records(msg: Message) -> tuple[str, ArrayRecord, str, ConfigRecord]:
    content = msg.content
    arrays = list(arrays_of(content))
    if not arrays:
        raise ValueError("the message carries no ArrayRecord (no model to train)")
    configs = list(configs_of(content))
    akey, arec = arrays[0]
    ckey, crec = configs[0] if configs else (keys.CONFIG, ConfigRecord())
    return akey, arec, ckey, crec


def round_of(msg: Message, config: Mapping[str, Any]) -> int:
    """The server round of a message (its config's ``server-round``, else its group id)."""
    value = config.get(keys.SERVER_ROUND)
    if isinstance(value, int):
        return value
    group = msg.metadata.group_id
    return int(group) if group.isdigit() else 0


def train_settings(c: ClientSection, config: Mapping[str, Any]) -> trainer.TrainSettings:
    """The client's local training for this message: its settings, overridden by the
    strategy's train config (lr, epochs, steps, batch size, proximal mu, time budget)."""
    batch_size = int(config.get(keys.BATCH_SIZE, c.batch_size))
    return trainer.TrainSettings(
        epochs=int(config.get(keys.LOCAL_EPOCHS, c.local_epochs)),
        steps=int(config.get(keys.LOCAL_STEPS, c.local_steps)),
        batch_size=batch_size,
        lr=float(config.get(keys.LR, c.lr)),
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        proximal_mu=float(config.get(keys.PROXIMAL_MU, 0.0)),
        max_steps=steps_within_budget(config, batch_size),
        grad_bits=c.grad_bits,
        autocast=c.autocast,
    )


def steps_within_budget(config: Mapping[str, Any], batch_size: int) -> int:
    """Partial work: the SGD steps that fit the time budget the grid gave (0 = no limit).

    At least one step is taken; a client that cannot fit even one is late, and the
    round policy drops it.
    """
    budget, spp = config.get(keys.TIME_BUDGET), config.get(keys.SECONDS_PER_SAMPLE)
    if not isinstance(budget, (int, float)) or not isinstance(spp, (int, float)) or spp <= 0:
        return 0
    return max(1, int(budget / spp) // batch_size)


def _load(rt: Runtime, arrays: ArrayRecord) -> None:
    if rt.lora:
        lora.load_trainable(rt.model, arrays)
    else:
        rt.model.load_state_dict(arrays.to_torch_state_dict(), strict=True)


def _state(rt: Runtime) -> dict[str, torch.Tensor]:
    """What goes back (on the CPU): the whole model, or the trainable adapters in LoRA mode."""
    state = lora.trainable_state(rt.model) if rt.lora else rt.model.state_dict()
    return {k: v.detach().cpu() for k, v in state.items()}


def _train_weights(msg: Message, context: Context) -> Message:
    """Local training; the reply carries the new weights (adapters in LoRA mode), and what a
    stateful algorithm adds (`fedsim.clients.algorithms`)."""
    rt = runtime(context)
    cid = int(context.node_config[keys.PARTITION_ID])
    akey, arrays, _, config = records(msg)
    rnd = round_of(msg, config)
    seed = rt.spec.seed
    algo = algorithms.algorithm_of(config)
    if algo and rt.lora:
        raise ValueError(f"{algo} needs the whole model; it does not combine with LoRA-only updates")
    prefixes = algorithms.personal_prefixes(config) if algo == "fedper" else ()
    if prefixes:
        personal = algorithms.personal_layers(context.state, _initial_state(rt), prefixes)
        rt.model.load_state_dict(algorithms.complete(arrays, personal), strict=True)
    else:
        _load(rt, arrays)
    x, y = rt.data.client_train(cid)
    x, y = x.to(rt.device), y.to(rt.device)
    if config.get(keys.LABEL_FLIP):  # a Byzantine label-flipping client (fedsim.scenarios.byzantine)
        y = rt.data.num_classes - 1 - y
    seeding.seed_torch(seeding.int_seed(seed, rnd, cid, "torch"))  # dropout & co. in user models
    np.random.seed(seeding.int_seed(seed, rnd, cid, "numpy") % 2**32)  # e.g. Flower's LocalDpMod noise
    settings = train_settings(rt.spec.client, config)
    scaffold = algorithms.Scaffold.start(msg.content, context.state, rt.model) if algo == "scaffold" else None
    received = {k: a.numpy() for k, a in arrays.items()} if scaffold is not None else {}
    start = time.perf_counter()
    generator = seeding.torch_generator(seed, rnd, cid, "batches")
    if algo == "apfl":
        personal = _apfl_personal(rt, context, arrays, config)
        outcome = apfl.train(rt.model, x, y, settings, generator, personal, bool(config.get(keys.APFL_ADAPTIVE, True)))
        personal.save(context.state)
    else:
        outcome = trainer.train(rt.model, x, y, settings, generator,
                                correction=scaffold.correction() if scaffold is not None else None)
    content = RecordDict()
    state = _state(rt)
    if prefixes:
        state, personal = algorithms.split_personal(state, prefixes)
        save_arrays(context.state, "fedper", personal)
    content[akey] = ArrayRecord(state)
    if scaffold is not None:
        content[keys.SCAFFOLD_DC] = scaffold.finish(context.state, received, dict(rt.model.named_parameters()),
                                                    outcome.steps, settings.lr)
    if algo == "ditto":
        _train_ditto(rt, context, arrays, x, y, config, seed, rnd, cid)
    content[keys.METRICS] = MetricRecord({
        keys.NUM_EXAMPLES: len(x),
        keys.TRAIN_LOSS: outcome.loss,
        keys.STEPS: outcome.steps,
        keys.EXAMPLES_SEEN: outcome.examples_seen,
        keys.TRAIN_SECONDS: time.perf_counter() - start,
    })
    return Message(content, reply_to=msg)


def _train_ditto(rt: Runtime, context: Context, arrays: ArrayRecord, x: torch.Tensor, y: torch.Tensor,
                 config: Mapping[str, Any], seed: int, rnd: int, cid: int) -> None:
    """Ditto's second half: the personal model, pulled toward the global model received."""
    received = {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in arrays.items()}
    rt.model.load_state_dict(algorithms.ditto_personal(context.state, received), strict=True)
    lam = float(config.get(keys.DITTO_LAMBDA, 0.0))
    settings = dataclasses.replace(train_settings(rt.spec.client, config), proximal_mu=lam)
    anchor = [received[n] for n in algorithms.trainable_names(rt.model)]
    trainer.train(rt.model, x, y, settings, seeding.torch_generator(seed, rnd, cid, "ditto"), anchor=anchor)
    save_arrays(context.state, "ditto", _state(rt))


def _apfl_personal(rt: Runtime, context: Context, arrays: ArrayRecord, config: Mapping[str, Any]) -> apfl.Personal:
    """This client's APFL local model and mixing weight (at first: the global model received)."""
    received = {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in arrays.items()}
    return apfl.Personal.load(context.state, received, algorithms.trainable_names(rt.model),
                              float(config.get(keys.APFL_ALPHA, 0.25)))


def _initial_state(rt: Runtime) -> dict[str, torch.Tensor]:
    """The seeded initial model's state (personal layers start from it)."""
    spec = rt.spec
    model = init_model(spec.model.name, spec.model.params, rt.data.input_shape, rt.data.num_classes, spec.seed)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def train(msg: Message, context: Context) -> Message:
    """Train, then (optionally) Flower's LocalDpMod clips and noises the update, and the
    codec chain encodes it."""
    rt = runtime(context)
    dp = rt.spec.client.local_dp
    if dp.enabled:
        reply = LocalDpMod(dp.clipping_norm, dp.sensitivity, dp.epsilon, dp.delta)(msg, context, _train_weights)
    else:
        reply = _train_weights(msg, context)
    if not rt.codec or reply.has_error():
        return reply
    akey, arrays, _, config = records(msg)
    new_key, new_arrays = next(iter(arrays_of(reply.content)))
    state = load_state(context.state)
    ctx = CodecContext(rt.spec.seed, round_of(msg, config), int(context.node_config[keys.PARTITION_ID]), state)
    record, marker, seconds = encode_update(rt.codec, {k: a.numpy() for k, a in new_arrays.items()},
                                            {k: a.numpy() for k, a in arrays.items()}, ctx)
    save_state(context.state, state)
    metrics = metrics_of(reply.content)[0][1]
    metrics[keys.ENCODE_SECONDS] = seconds
    content = RecordDict({new_key: record, keys.METRICS: metrics, MARKER: marker})
    for key, extra in arrays_of(reply.content)[1:]:  # e.g. SCAFFOLD's control variates: sent as they are
        content[key] = extra
    return Message(content, reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    rt = runtime(context)
    cid = int(context.node_config[keys.PARTITION_ID])
    _, arrays, _, config = records(msg)
    algo = algorithms.algorithm_of(config)
    prefixes = algorithms.personal_prefixes(config) if algo == "fedper" else ()
    if prefixes:  # the client's personal model: its own layers on the shared body
        personal = algorithms.personal_layers(context.state, _initial_state(rt), prefixes)
        rt.model.load_state_dict(algorithms.complete(arrays, personal), strict=True)
    elif algo == "ditto":
        received = {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in arrays.items()}
        rt.model.load_state_dict(algorithms.ditto_personal(context.state, received), strict=True)
    elif algo == "apfl":  # alpha v + (1 - alpha) w, with the global model w received
        received = {k: torch.from_numpy(np.array(a.numpy(), copy=True)) for k, a in arrays.items()}
        rt.model.load_state_dict(_apfl_personal(rt, context, arrays, config).mixed(received), strict=True)
    else:
        _load(rt, arrays)
    x, y = rt.data.client_test(cid)
    loss, acc = trainer.evaluate(rt.model, x.to(rt.device), y.to(rt.device))
    metrics = MetricRecord({
        keys.NUM_EXAMPLES: len(x),
        keys.EVAL_LOSS: 0.0 if len(x) == 0 else loss,
        keys.EVAL_ACC: 0.0 if len(x) == 0 else acc,
    })
    return Message(RecordDict({keys.METRICS: metrics}), reply_to=msg)


for _app in _APPS:
    _app.train()(train)
    _app.evaluate()(evaluate)
