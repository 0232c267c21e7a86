"""Legacy Flower apps (``ServerApp(server_fn=...)``, a legacy ``Server``) on the simulated grid.

Flower's legacy server sends a round's instructions one client at a time, from a thread
pool (``flwr.server.server.fit_clients`` / ``evaluate_clients``: one
``grid.send_and_receive([message])`` per ``ClientProxy``). On fedsim's grid that would
make a round's clients arrive one after another on the virtual clock, in whatever order
the threads ran. `batched` replaces those two functions, for the duration of a run, by
ones that build exactly the messages the proxies build (same content conversion, TTL
and group id), send them to the grid as one batch, and convert the replies exactly as
the proxies do (an error reply becomes the proxy's ``ValueError``; a status other than
OK a failure). The strategy receives the same results, in the order it sampled the
clients, and the round takes the virtual time of its slowest client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def _send(pairs: list[tuple[Any, Any]], to_content: Any, message_type: str, timeout: float | None,
          group_id: int) -> tuple[list[Any], dict[int, Any]]:
    """One batch for all proxies (all on the same grid): their replies by node id."""
    from flwr.app import Message

    if not pairs:
        return [], {}
    grid = pairs[0][0].grid
    messages = [Message(content=to_content(ins, keep_input=True), message_type=message_type,
                        dst_node_id=proxy.node_id, group_id=str(group_id) if group_id else "", ttl=timeout)
                for proxy, ins in pairs]
    replies = {r.metadata.src_node_id: r for r in grid.send_and_receive(messages)}
    return messages, replies


def _gather(pairs: list[tuple[Any, Any]], replies: dict[int, Any], from_content: Any) -> tuple[list[Any], list[Any]]:
    from flwr.common import Code

    results: list[Any] = []
    failures: list[Any] = []
    for proxy, _ in pairs:
        msg = replies.get(proxy.node_id)
        if msg is None:
            failures.append(ValueError("Expected one Message but got: 0"))
        elif msg.has_error():
            failures.append(ValueError(f"Message contains an Error (reason: {msg.error.reason}). "
                                       "It originated during client-side execution of a message."))
        else:
            res = from_content(msg.content)
            (results if res.status.code == Code.OK else failures).append((proxy, res))
    return results, failures


@contextlib.contextmanager
def batched() -> Iterator[None]:
    """Legacy rounds go to the grid as one batch per phase (see the module docstring)."""
    from flwr.app.message_type import MessageType
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import server as legacy
    from flwr.server.compat.grid_client_proxy import GridClientProxy

    def fit_clients(client_instructions: list[tuple[Any, Any]], max_workers: Any, timeout: float | None,
                    group_id: int) -> tuple[list[Any], list[Any]]:
        if not all(isinstance(p, GridClientProxy) for p, _ in client_instructions):
            return original_fit(client_instructions, max_workers, timeout, group_id)
        _, replies = _send(client_instructions, compat.fitins_to_recorddict, MessageType.TRAIN, timeout, group_id)
        return _gather(client_instructions, replies, lambda c: compat.recorddict_to_fitres(c, keep_input=False))

    def evaluate_clients(client_instructions: list[tuple[Any, Any]], max_workers: Any, timeout: float | None,
                         group_id: int) -> tuple[list[Any], list[Any]]:
        if not all(isinstance(p, GridClientProxy) for p, _ in client_instructions):
            return original_evaluate(client_instructions, max_workers, timeout, group_id)
        _, replies = _send(client_instructions, compat.evaluateins_to_recorddict, MessageType.EVALUATE, timeout,
                           group_id)
        return _gather(client_instructions, replies, compat.recorddict_to_evaluateres)

    original_fit, original_evaluate = legacy.fit_clients, legacy.evaluate_clients
    legacy.fit_clients, legacy.evaluate_clients = fit_clients, evaluate_clients
    try:
        yield
    finally:
        legacy.fit_clients, legacy.evaluate_clients = original_fit, original_evaluate
