"""fedgate's ClientApp: unpack the message, run a local round (fedgate.federated.client),
pack the reply. The client's shard comes from ``partition-id`` / ``num-partitions`` in its
node config; any ``section.key`` in the node config overrides the run config for that node
(e.g. ``adapter.r`` with ``federation.heterogeneous-ranks``). What a client keeps between
rounds (its strategy's records, e.g. SCAFFOLD's c_i; personal structural gates) lives in
Flower's ``context.state``."""

from __future__ import annotations

import datasets
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgate import strategies
from fedgate.federated import protocol as P
from fedgate.federated.client import ClientTask, client_config
from fedgate.federated.ranks import run_ranks
from fedgate.state import from_numpy, to_numpy

app = ClientApp()


def _partition(context: Context) -> tuple[int, int]:
    """(partition-id, num-partitions) from the node config."""
    node = context.node_config
    for key in (P.PARTITION_ID, P.NUM_PARTITIONS):
        if key not in node:
            raise KeyError(f"node config has no {key!r}: start the SuperNode with "
                           f"--node-config 'partition-id=<i> num-partitions=<n>'")
    return int(node[P.PARTITION_ID]), int(node[P.NUM_PARTITIONS])


def _task(context: Context) -> ClientTask:
    datasets.disable_progress_bars()  # one bar per shard operation floods the simulation log
    cfg = client_config(context.run_config, context.node_config)
    return ClientTask(cfg, *_partition(context))


def _arrays(record: ArrayRecord) -> dict:
    return to_numpy(record.to_torch_state_dict())


def _pruned(msg: Message) -> list[str]:
    return [m for m in str(msg.content[P.CONFIG].get(P.PRUNED, "")).split(",") if m]


def _kept(context: Context, key: str) -> dict | None:
    return _arrays(context.state[key]) if key in context.state else None


@app.train()
def train(msg: Message, context: Context) -> Message:
    """A local round: in this process, or with engine.world-size > 1 on that many rank
    processes (fedgate/federated/ranks.py; no model is built here then)."""
    cfg = client_config(context.run_config, context.node_config)
    fed = cfg.federation
    partition_id, num_partitions = _partition(context)
    prior = dict(msg.content[P.GATE_PRIOR]) if P.GATE_PRIOR in msg.content else {}
    server_round = int(msg.content[P.CONFIG][P.SERVER_ROUND])
    personal = _kept(context, P.STATE_PERSONAL) if fed.personal_gates else None
    rule = strategies.get(fed.strategy)
    if cfg.engine.world_size > 1:  # a strategy with extra records (SCAFFOLD) is refused with it
        update = run_ranks(context.run_config, context.node_config, partition_id, num_partitions,
                           _arrays(msg.content[P.ARRAYS]), server_round, prior or None, pruned=_pruned(msg),
                           personal=personal)
    else:
        received = {r: _arrays(msg.content[r]) for r in rule.downlink_records if r in msg.content}
        kept = {r: _kept(context, r) or {} for r in rule.client_records}
        update = _task(context).train(_arrays(msg.content[P.ARRAYS]), server_round, prior or None,
                                      pruned=_pruned(msg), received=received, kept=kept, personal=personal)
    token, structural = P.split_gate_stats(update.gate_stats)
    rounds_kept = int(context.state[P.STATE_COUNTS]["rounds-trained"]) if P.STATE_COUNTS in context.state else 0
    context.state[P.STATE_COUNTS] = MetricRecord({"rounds-trained": rounds_kept + 1})
    content = RecordDict({
        P.ARRAYS: ArrayRecord(from_numpy(update.delta)),
        P.METRICS: MetricRecord({P.NUM_EXAMPLES: update.num_examples, P.PARTITION_ID: partition_id,
                                 "rounds-trained": rounds_kept + 1, **update.metrics}),
        P.GATE_TOKEN: MetricRecord(token),
        P.GATE_STRUCT: MetricRecord(structural),
    })
    for record, arrays in update.kept.items():
        context.state[record] = ArrayRecord(from_numpy(arrays))
    for record, arrays in update.uplink.items():
        content[record] = ArrayRecord(from_numpy(arrays))
    if update.personal is not None:
        context.state[P.STATE_PERSONAL] = ArrayRecord(from_numpy(update.personal))
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    task = _task(context)
    personal = _kept(context, P.STATE_PERSONAL) if task.cfg.federation.personal_gates else None
    kept = {r: _kept(context, r) or {} for r in strategies.get(task.cfg.federation.strategy).client_records}
    rows, metrics = task.evaluate(_arrays(msg.content[P.ARRAYS]), pruned=_pruned(msg), personal=personal, kept=kept)
    content = RecordDict({P.METRICS: MetricRecord({P.NUM_EXAMPLES: rows, P.PARTITION_ID: task.partition_id,
                                                   **metrics})})
    return Message(content=content, reply_to=msg)


@app.query()
def query(msg: Message, context: Context) -> Message:
    """What the server asks outside a round: this node's adapter rank and partition id, or
    the ridge statistics of its training rows for the federated head (fedgate/ridge.py)."""
    ask = str(msg.content[P.CONFIG].get(P.ASK, P.ASK_NODE)) if P.CONFIG in msg.content else P.ASK_NODE
    if ask == P.ASK_HEAD_STATS:
        task = _task(context)
        stats = task.head_statistics(_arrays(msg.content[P.ARRAYS]), pruned=_pruned(msg))
        content = RecordDict({
            P.HEAD_STATS: ArrayRecord(from_numpy({P.GRAM: stats.gram.astype("float32"),
                                                  P.MOMENT: stats.moment.astype("float32")})),
            P.METRICS: MetricRecord({P.NUM_EXAMPLES: stats.count, P.PARTITION_ID: task.partition_id}),
        })
        return Message(content=content, reply_to=msg)
    if ask != P.ASK_NODE:
        raise ValueError(f"query asks for {ask!r}; this client answers {P.ASK_NODE!r} or {P.ASK_HEAD_STATS!r}")
    cfg = client_config(context.run_config, context.node_config)
    partition_id, _ = _partition(context)
    return Message(content=RecordDict({P.METRICS: MetricRecord({P.ADAPTER_RANK: cfg.adapter.r,
                                                                P.PARTITION_ID: partition_id})}), reply_to=msg)
