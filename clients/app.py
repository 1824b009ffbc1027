"""fedgate's ClientApp: unpack the message, run a local round (fedgate.federated.client),
pack the reply. The client's shard comes from ``partition-id`` / ``num-partitions`` in its
node config; any ``section.key`` in the node config overrides the run config for that node."""

from __future__ import annotations

import datasets
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedgate.federated import protocol as P
from fedgate.federated.client import ClientTask, client_config
from fedgate.state import from_numpy, to_numpy

app = ClientApp()


def _task(context: Context) -> ClientTask:
    datasets.disable_progress_bars()  # one bar per shard operation floods the simulation log
    node = context.node_config
    for key in (P.PARTITION_ID, P.NUM_PARTITIONS):
        if key not in node:
            raise KeyError(f"node config has no {key!r}: start the SuperNode with "
                           f"--node-config 'partition-id=<i> num-partitions=<n>'")
    cfg = client_config(context.run_config, node)
    return ClientTask(cfg, int(node[P.PARTITION_ID]), int(node[P.NUM_PARTITIONS]))


@app.train()
def train(msg: Message, context: Context) -> Message:
    task = _task(context)
    global_state = to_numpy(msg.content[P.ARRAYS].to_torch_state_dict())
    prior = dict(msg.content[P.GATE_PRIOR]) if P.GATE_PRIOR in msg.content else {}
    update = task.train(global_state, int(msg.content[P.CONFIG][P.SERVER_ROUND]), prior or None)
    token, structural = P.split_gate_stats(update.gate_stats)
    content = RecordDict({
        P.ARRAYS: ArrayRecord(from_numpy(update.delta)),
        P.METRICS: MetricRecord({P.NUM_EXAMPLES: update.num_examples, P.PARTITION_ID: task.partition_id,
                                 **update.metrics}),
        P.GATE_TOKEN: MetricRecord(token),
        P.GATE_STRUCT: MetricRecord(structural),
    })
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    task = _task(context)
    rows, metrics = task.evaluate(to_numpy(msg.content[P.ARRAYS].to_torch_state_dict()))
    content = RecordDict({P.METRICS: MetricRecord({P.NUM_EXAMPLES: rows, P.PARTITION_ID: task.partition_id,
                                                   **metrics})})
    return Message(content=content, reply_to=msg)
