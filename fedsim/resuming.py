"""Resume verification: a checkpoint continues only the run that wrote it.

A checkpoint records the resolved scenario (``Config.to_dict``) it was written by. On
``--resume`` the run folder's ``config.toml`` (plus any ``--set``) is resolved again and
compared field by field; any difference is refused with one line naming the first changed
field, unless ``--resume-with-changes`` names it (a field, or a section covering its fields).
What is refused whatever is named: ``run.rounds`` below the checkpoint's round, and a model
whose arrays (names, shapes) differ from the checkpoint's.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fedsim.core.errors import ConfigError


@dataclass(frozen=True)
class Change:
    field: str
    old: Any
    new: Any

    def describe(self) -> str:
        return f"{self.field}: {_short(self.old)} -> {_short(self.new)}"


def _short(value: Any) -> str:
    text = "(absent)" if value is _ABSENT else json.dumps(value, allow_nan=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


_ABSENT = object()


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        for key in sorted(node):
            yield from _leaves(node[key], f"{prefix}.{key}" if prefix else str(key))
    elif prefix:
        yield prefix, node


def changes(old: dict[str, Any], new: dict[str, Any]) -> list[Change]:
    """Every field whose value differs (lists compare whole), in field order."""
    norm = json.loads(json.dumps(old, allow_nan=True)), json.loads(json.dumps(new, allow_nan=True))
    before, after = dict(_leaves(norm[0])), dict(_leaves(norm[1]))
    out = []
    for field in sorted(set(before) | set(after)):
        a, b = before.get(field, _ABSENT), after.get(field, _ABSENT)
        if a != b and not (a != a and b != b):  # NaN equals NaN here
            out.append(Change(field, a, b))
    return out


def _covered(field: str, accepted: Iterable[str]) -> bool:
    return any(field == a or field.startswith(a + ".") for a in accepted)


def verify(recorded: dict[str, Any], now: dict[str, Any], rounds_now: int, ck_round: int,
           accepted: Iterable[str]) -> list[Change]:
    """The changes ``--resume-with-changes`` allowed; ConfigError for any other one."""
    accepted = [a.strip() for a in accepted if a.strip()]
    recorded_rounds = recorded.get("run", {}).get("rounds")
    if isinstance(recorded_rounds, int) and ck_round > recorded_rounds:
        raise ConfigError("--resume", "checkpoint", f"damaged or crafted checkpoint: round {ck_round} is beyond its "
                                                    f"own scenario's run.rounds = {recorded_rounds}; refused")
    if ck_round > rounds_now:
        raise ConfigError("run.rounds", rounds_now, f"is below the checkpoint's round {ck_round}: a resumed run can "
                                                    "only go on (raise it, or start a new run)")
    found = changes(recorded, now)
    refused = [c for c in found if not _covered(c.field, accepted)]
    if refused:
        first = refused[0]
        more = f" (and {len(refused) - 1} more: {', '.join(c.field for c in refused[1:4])})" if len(refused) > 1 else ""
        value = None if first.new is _ABSENT else first.new
        raise ConfigError(first.field, value, f"changed since the checkpoint (was {_short(first.old)}){more}; "
                                              f"resume with --resume-with-changes {first.field} if that is intended, "
                                              "or start a new run")
    return found


def check_arrays(saved: Any, built: Any) -> None:
    """The checkpoint's global arrays fit the model the scenario builds."""
    def spec(record: Any) -> dict[str, tuple[int, ...]]:  # (dtypes may differ: Flower's FedOpt keeps float64)
        return {k: tuple(v.shape) for k, v in record.items()}

    a, b = spec(saved), spec(built)
    if a == b:
        return
    diff = sorted(set(a) ^ set(b)) or [k for k in a if a[k] != b[k]]
    key = diff[0]
    raise ConfigError("--resume", "checkpoint", f"its model arrays do not fit the scenario's model: {key} is "
                                                f"{a.get(key, 'absent')} in the checkpoint, {b.get(key, 'absent')} now")
