"""Flower records <-> numpy, wire sizes, and turning a train reply into a validated
:class:`ClientUpdate` (or a rejection reason)."""

from __future__ import annotations

from typing import Mapping

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict
from flwr.common.serde import recorddict_to_proto

from fedgate.aggregation import ClientUpdate
from fedgate.aggregation.robust import validate_update
from fedgate.federated import protocol as P
from fedgate.state import from_numpy, to_numpy

Layout = dict[str, tuple[tuple[int, ...], np.dtype]]


def to_record(state: Mapping[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord(from_numpy(dict(state)))


def from_record(record: ArrayRecord) -> dict[str, np.ndarray]:
    return to_numpy(record.to_torch_state_dict())


def wire_bytes(content: RecordDict) -> int:
    """Bytes of a message's content as serialized for the wire."""
    return recorddict_to_proto(content).ByteSize()


def array_bytes(record: ArrayRecord) -> int:
    """Bytes of the tensors alone (no framing, no array headers)."""
    return int(sum(a.numpy().nbytes for a in record.values()))


def layout(state: Mapping[str, np.ndarray]) -> Layout:
    return {k: (tuple(v.shape), np.asarray(v).dtype) for k, v in state.items()}


def parse_train_reply(msg: Message, expected: Layout, max_norm: float,
                      extra: Mapping[str, Layout] | None = None
                      ) -> tuple[ClientUpdate, dict[str, dict[str, np.ndarray]], float]:
    """(update, the strategy's extra records by name, update norm); raises KeyError/
    ValueError/TypeError with the reason when the reply must not be aggregated. ``extra``:
    the records the strategy expects back with their layouts (SCAFFOLD's c_i+ - c_i)."""
    content = msg.content
    for key in (P.ARRAYS, P.METRICS):
        if key not in content:
            raise KeyError(f"reply has no {key!r} record")
    delta = from_record(content[P.ARRAYS])
    norm = validate_update(delta, expected, max_norm)
    metrics = {k: float(v) for k, v in content[P.METRICS].items()}
    n = int(metrics.pop(P.NUM_EXAMPLES, -1))
    if n <= 0:
        raise ValueError(f"reply metric {P.NUM_EXAMPLES!r} must be a positive count, got {n}")
    gates = {}
    if P.GATE_TOKEN in content and P.GATE_STRUCT in content:
        gates = P.join_gate_stats(dict(content[P.GATE_TOKEN]), dict(content[P.GATE_STRUCT]),
                                  sender=f"node {msg.metadata.src_node_id}")
    extras = {}
    for record, shape in (extra or {}).items():
        if record not in content:
            raise KeyError(f"reply has no {record!r} record, which the strategy needs")
        extras[record] = from_record(content[record])
        validate_update(extras[record], shape)
    return ClientUpdate(msg.metadata.src_node_id, delta, n, metrics, gates), extras, norm
