"""The server's warm-up on the shared set G, one definition for every model that starts
from it: the full model's initial weights (Zhao et al.'s data sharing, ``[data.sharing]
warmup_epochs``) and LoRA's frozen base (``codec = [{ name = "lora", base = "warmup" }]``).
The same scenario therefore gives both arms of a LoRA-vs-full-fine-tuning study the same
starting model, bit for bit, in every process."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedsim.core import seeding


def warm_up(model: nn.Module, data: Any, sharing: Any, client: Any, seed: int, epochs: int) -> nn.Module:
    """Train ``model`` in place for ``epochs`` on G (``data.shared()``) with the client's
    batch size, momentum and weight decay and ``sharing.warmup_lr`` (else the client's lr);
    batches drawn from the run seed's "warm-up" stream. The global torch RNG is left as it was."""
    from fedsim.clients import trainer

    x, y = data.shared()
    settings = trainer.TrainSettings(epochs=epochs, batch_size=client.batch_size,
                                     lr=sharing.warmup_lr or client.lr, momentum=client.momentum,
                                     weight_decay=client.weight_decay)
    with torch.random.fork_rng(devices=[]):
        trainer.train(model, x, y, settings, seeding.torch_generator(seed, 0, seeding.SERVER, "warm-up"))
    return model
