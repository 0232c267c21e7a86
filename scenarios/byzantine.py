"""Byzantine clients: a fixed fraction of the federation sends poisoned updates.

    [byzantine]
    fraction = 0.3            # of all clients, drawn once from the run seed
    attack = "sign_flip"      # sign_flip | scaled | label_flip | random
    scale = 4.0               # sign_flip: w - scale*(w' - w); scaled: w + scale*(w' - w)
    noise_std = 1.0           # random: every weight ~ N(0, noise_std)

``label_flip`` trains on flipped labels (class c -> C-1-c) inside fedsim's ClientApp; the
other attacks rewrite an honest client's reply, so they apply to any ClientApp. Which
clients are malicious is the same on every executor, and the list is in summary.json.
Robust aggregation (Krum, MultiKrum, Bulyan, FedMedian, FedTrimmedAvg) is Flower's; see
``benchmarks/byzantine.py`` for accuracy with 0 / 10 / 30 % attackers.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict

from fedsim.core import keys, seeding
from fedsim.core.errors import ConfigError
from fedsim.core.keys import LABEL_FLIP
from fedsim.core.records import arrays_of, configs_of
from fedsim.core.schema import option

ATTACKS = ("sign_flip", "scaled", "label_flip", "random")


@dataclasses.dataclass(frozen=True)
class ByzantineSection:
    fraction: float = option(0.0, ge=0.0, lt=1.0, doc="share of all clients that are malicious")
    attack: str = option("sign_flip", choices=ATTACKS)
    scale: float = option(4.0, gt=0.0, le=1e6, doc="sign_flip / scaled: multiple of the honest update")
    noise_std: float = option(1.0, gt=0.0, le=1e6, doc="random: std of the weights sent")

    @property
    def enabled(self) -> bool:
        return self.fraction > 0


def malicious_clients(section: ByzantineSection, num_clients: int, seed: int) -> frozenset[int]:
    k = int(round(section.fraction * num_clients))
    if k == 0:
        return frozenset()
    rng = seeding.rng(seed, 0, seeding.SERVER, "byzantine")
    return frozenset(int(c) for c in rng.choice(num_clients, size=k, replace=False))


def check_app(section: ByzantineSection, app: str) -> None:
    if section.enabled and section.attack == "label_flip" and app != "fedsim":
        raise ConfigError("byzantine.attack", "label_flip", "needs fedsim's ClientApp (client.app = \"fedsim\"); "
                                                            "the other attacks work with any ClientApp")


class ByzantineApp:
    """Wraps a ClientApp: malicious clients' training replies are poisoned. Picklable."""

    def __init__(self, app: object, section: ByzantineSection, bad: frozenset[int], seed: int) -> None:
        self.app, self.section, self.bad, self.seed = app, section, bad, seed

    def __call__(self, message: Message, context: Context) -> Message:
        cid = int(context.node_config.get(keys.PARTITION_ID, 0))
        if message.metadata.message_type != "train" or cid not in self.bad:
            return self.app(message, context)  # type: ignore[operator]
        attack = self.section.attack
        if attack == "label_flip":
            content = RecordDict()
            flagged = False
            for key, rec in message.content.items():
                if isinstance(rec, ConfigRecord) and not flagged:
                    rec = ConfigRecord({**dict(rec), LABEL_FLIP: True})
                    flagged = True
                content[key] = rec
            if not flagged:
                content["config"] = ConfigRecord({LABEL_FLIP: True})
            return self.app(Message(content=content, metadata=message.metadata), context)  # type: ignore[operator]
        reply = self.app(message, context)  # type: ignore[operator]
        if reply.has_error() or not arrays_of(message.content):
            return reply
        sent = arrays_of(message.content)[0][1]
        rnd = next((v for _, r in configs_of(message.content) for k, v in r.items()
                    if k == keys.SERVER_ROUND and isinstance(v, int)), 0)
        rng = seeding.rng(self.seed, rnd, cid, "byzantine-noise")
        content = RecordDict()
        done = False
        for key, rec in reply.content.items():
            if isinstance(rec, ArrayRecord) and not done:
                arrays = {}
                for name, arr in rec.items():
                    new = arr.numpy()
                    old = sent[name].numpy() if name in sent else new
                    if attack == "sign_flip":
                        bad = old - self.section.scale * (new - old)
                    elif attack == "scaled":
                        bad = old + self.section.scale * (new - old)
                    else:  # random
                        bad = rng.normal(0.0, self.section.noise_std, new.shape)
                    arrays[name] = Array(np.ascontiguousarray(bad.astype(new.dtype)))
                rec = ArrayRecord(arrays)
                done = True
            content[key] = rec
        return Message(content, reply_to=message)
