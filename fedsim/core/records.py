"""Fast access to a RecordDict's records by type.

Flower's ``RecordDict.array_records`` (and ``config_records``, ``metric_records``) builds
and re-validates a new typed dict on every access; at thousands of replies per round that
dominated the engine's time. These helpers filter ``items()`` instead (same order).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict


def arrays_of(content: RecordDict) -> list[tuple[str, ArrayRecord]]:
    return [(k, r) for k, r in content.items() if isinstance(r, ArrayRecord)]


def configs_of(content: RecordDict) -> list[tuple[str, ConfigRecord]]:
    return [(k, r) for k, r in content.items() if isinstance(r, ConfigRecord)]


def metrics_of(content: RecordDict) -> list[tuple[str, MetricRecord]]:
    return [(k, r) for k, r in content.items() if isinstance(r, MetricRecord)]


def array_bytes(content: RecordDict) -> int:
    """Bytes of the serialized arrays in a message's records."""
    return sum(len(arr.data) for _, rec in arrays_of(content) for arr in rec.values())


def payload_bytes(content: RecordDict) -> int:
    """What travels on a link: the serialized arrays, plus the ``bytes`` values of config
    records (e.g. SecAgg+'s public keys, encrypted shares and masked vectors). Scalars
    (a round number, a learning rate) are not counted."""
    total = array_bytes(content)
    for _, rec in configs_of(content):
        for value in rec.values():
            if isinstance(value, bytes):
                total += len(value)
            elif isinstance(value, list) and value and isinstance(value[0], bytes):
                total += sum(len(v) for v in value)
    return total
