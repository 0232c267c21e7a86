"""Next-character models for the text tasks (``shakespeare``, ``dialects``).

Inputs are windows of character ids (float32, as fedsim stores every input); each model
returns the logits of the character that follows the window, so fedsim's cross-entropy is
the next-token loss and its accuracy the next-token accuracy.

- ``char_lstm``: LEAF's Shakespeare model (an 8-dimensional embedding, two LSTM layers of
  256 units, a linear read-out of the last step); sizes configurable.
- ``char_transformer``: a small GPT-2-style causal transformer built from a
  ``transformers.GPT2Config`` (random init from the run seed, dropout off by default), read
  out at the last position. Its projections are named ``c_attn``, ``c_proj`` (attention and
  MLP) and ``c_fc``: what the ``lora`` codec's ``target_modules`` name.
- ``pretrained``: a causal LM the user saved with ``save_pretrained`` in a local folder,
  loaded offline (``local_files_only``) from safetensors only (no pickled weights, no remote
  code). Its vocabulary must cover the dataset's character ids (ids are the dataset's,
  not a tokenizer's). It is the usual LoRA base.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from fedsim.clients.models import register_model
from torch import nn

from fedsim.core.errors import ConfigError
from fedsim.core.schema import option


def _sequence_length(input_shape: tuple[int, ...], name: str) -> int:
    if len(input_shape) != 1:
        raise ConfigError("model.name", name, f"needs windows of character ids (seq_len,); this dataset gives {input_shape}")
    return int(input_shape[0])


class LastTokenLM(nn.Module):
    """A Hugging Face causal LM read out at the last position of each window."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=x.long(), use_cache=False).logits[:, -1, :]


class CharLSTM(nn.Module):
    def __init__(self, vocab: int, embed: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.lstm = nn.LSTM(embed, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embed(x.long()))
        return self.head(out[:, -1, :])


@dataclasses.dataclass(frozen=True)
class CharLSTMParams:
    embed: int = option(8, ge=1, le=65536, doc="LEAF: 8")
    hidden: int = option(256, ge=1, le=65536, doc="LEAF: 256")
    layers: int = option(2, ge=1, le=64, doc="LEAF: 2")


@register_model("char_lstm", params=CharLSTMParams)
def char_lstm(input_shape: tuple[int, ...], num_classes: int, params: CharLSTMParams) -> nn.Module:
    _sequence_length(input_shape, "char_lstm")
    return CharLSTM(num_classes, params.embed, params.hidden, params.layers)


@dataclasses.dataclass(frozen=True)
class CharTransformerParams:
    layers: int = option(2, ge=1, le=96)
    heads: int = option(4, ge=1, le=128)
    width: int = option(64, ge=1, le=65536, doc="embedding width (n_embd); a multiple of heads")
    dropout: float = option(0.0, ge=0.0, lt=1.0, doc="residual, embedding and attention dropout")


@register_model("char_transformer", params=CharTransformerParams)
def char_transformer(input_shape: tuple[int, ...], num_classes: int, params: CharTransformerParams) -> nn.Module:
    seq_len = _sequence_length(input_shape, "char_transformer")
    if params.width % params.heads:
        raise ConfigError("model.width", params.width, f"must be a multiple of model.heads ({params.heads})")
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=num_classes, n_positions=seq_len, n_embd=params.width, n_layer=params.layers,
                        n_head=params.heads, resid_pdrop=params.dropout, embd_pdrop=params.dropout,
                        attn_pdrop=params.dropout, use_cache=False, bos_token_id=None, eos_token_id=None,
                        attn_implementation="eager")
    return LastTokenLM(GPT2LMHeadModel(config))


@dataclasses.dataclass(frozen=True)
class PretrainedParams:
    path: str = option("", doc="a local folder written by save_pretrained (config.json + *.safetensors)")


@register_model("pretrained", params=PretrainedParams)
def pretrained(input_shape: tuple[int, ...], num_classes: int, params: PretrainedParams) -> nn.Module:
    seq_len = _sequence_length(input_shape, "pretrained")
    folder = params.path
    if not folder or not os.path.isdir(folder):
        raise ConfigError("model.path", folder, "must be a local folder written by save_pretrained")
    if not any(f.endswith(".safetensors") for f in os.listdir(folder)):
        raise ConfigError("model.path", folder, "holds no .safetensors weights (pickled weights are not loaded)")
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config: Any = AutoConfig.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                     trust_remote_code=False, attn_implementation="eager")
    except Exception as exc:  # noqa: BLE001 - whatever the user's folder holds, one line
        raise ConfigError("model.path", folder, f"not a loadable causal LM ({type(exc).__name__}: {exc})") from None
    vocab = int(getattr(config, "vocab_size", 0))
    if vocab < num_classes:
        raise ConfigError("model.path", folder, f"its vocabulary ({vocab}) is smaller than the dataset's {num_classes} characters")
    positions = getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)
    if positions is not None and int(positions) < seq_len:
        raise ConfigError("model.path", folder, f"takes {positions} positions; the dataset's windows are {seq_len} long")
    return LastTokenLM(model)
