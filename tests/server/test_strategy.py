"""The Flower Strategy on real Flower messages (no network): FedAvg numbers, the gate prior,
rejected updates, byte accounting."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedgate.config import FedgateConfig
from fedgate.federated import protocol as P
from server.round_log import RoundLog
from server.strategy import FedgateStrategy, from_record, to_record, wire_bytes


@pytest.fixture(autouse=True)
def serverapp_identity():
    """Flower stamps new messages with the identity of the ServerApp task running them."""
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 1, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


class Nodes:
    """The part of a Grid the strategy uses to sample nodes."""

    def __init__(self, ids):
        self.ids = ids

    def get_node_ids(self):
        return list(self.ids)


GLOBAL = {"a.gate_weight": np.array([[1.0, 2.0]], dtype=np.float32), "head.bias": np.array([0.5], dtype=np.float32)}


def reply(msg, delta, n, token=0.5, struct=0.9):
    return Message(content=RecordDict({
        P.ARRAYS: to_record(delta),
        P.METRICS: MetricRecord({P.NUM_EXAMPLES: n, "train-loss": 1.0}),
        P.GATE_TOKEN: MetricRecord({"a": token}),
        P.GATE_STRUCT: MetricRecord({"a": struct}),
    }), reply_to=msg)


def test_round_trip_fedavg_gate_prior_and_bytes():
    cfg = FedgateConfig.from_flat({"federation.min-available-nodes": 2})
    strategy = FedgateStrategy(cfg, dict(GLOBAL))
    msgs = list(strategy.configure_train(1, to_record(strategy.global_state), ConfigRecord(), Nodes([11, 12, 13])))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [11, 12, 13]
    assert msgs[0].content[P.CONFIG][P.SERVER_ROUND] == 1
    assert dict(msgs[0].content[P.GATE_PRIOR]) == {}  # no profile before round 1
    assert strategy.round_log.bytes_down == 3 * wire_bytes(msgs[0].content)
    assert strategy.round_log.array_bytes_down == 3 * 12

    deltas = [  # 30, 10 examples; the third reply is broken
        {"a.gate_weight": np.array([[4.0, 0.0]], dtype=np.float32), "head.bias": np.array([1.0], dtype=np.float32)},
        {"a.gate_weight": np.array([[-4.0, 8.0]], dtype=np.float32), "head.bias": np.array([-1.0], dtype=np.float32)},
        {"a.gate_weight": np.array([[np.nan, 0.0]], dtype=np.float32), "head.bias": np.array([0.0], dtype=np.float32)},
    ]
    replies = [reply(msgs[0], deltas[0], 30, token=0.2), reply(msgs[1], deltas[1], 10, token=0.6),
               reply(msgs[2], deltas[2], 10)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    # mean delta = 0.75 * d0 + 0.25 * d1 = [[2, 2]], [0.5]; global + mean = [[3, 4]], [1.0]
    new = from_record(arrays)
    np.testing.assert_allclose(new["a.gate_weight"], [[3.0, 4.0]])
    np.testing.assert_allclose(new["head.bias"], [1.0])
    assert metrics[P.NUM_EXAMPLES] == 40
    rejected = strategy.round_log.rejected
    assert [r["node_id"] for r in rejected] == [msgs[2].metadata.dst_node_id] and "NaN" in rejected[0]["reason"]
    assert strategy.profile["a"]["token_gate"] == pytest.approx(0.75 * 0.2 + 0.25 * 0.6)

    msgs2 = list(strategy.configure_train(2, arrays, ConfigRecord(), Nodes([11, 12, 13])))
    assert dict(msgs2[0].content[P.GATE_PRIOR]) == pytest.approx({"a": 0.3})  # the prior reaches round 2


def test_wrong_shapes_failures_and_stragglers_are_recorded_not_averaged():
    strategy = FedgateStrategy(FedgateConfig.from_flat({"federation.min-train-nodes": 1,
                                                        "federation.round-timeout": 30.0}), dict(GLOBAL))
    msgs = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), Nodes([5, 6, 7, 8])))
    good = {k: np.ones_like(v) for k, v in GLOBAL.items()}
    wrong = {"a.gate_weight": np.ones((2, 2), dtype=np.float32), "head.bias": np.ones(1, dtype=np.float32)}
    failed = Message(Error(code=2, reason="client crashed"), reply_to=msgs[2])
    # node 8 never answers: Grid.send_and_receive returned at the round timeout without it
    arrays, _ = strategy.aggregate_train(1, [reply(msgs[0], good, 5), reply(msgs[1], wrong, 5), failed])
    np.testing.assert_allclose(from_record(arrays)["a.gate_weight"], GLOBAL["a.gate_weight"] + 1)
    assert "shape (2, 2)" in strategy.round_log.rejected[0]["reason"]
    assert strategy.round_log.failures == [{"node_id": 7, "stage": "train", "code": 2, "reason": "client crashed"}]
    assert strategy.round_log.dropped == [{"node_id": 8, "stage": "train",
                                             "reason": "no reply within 30 s (federation.round-timeout)"}]
    assert [c["node_id"] for c in strategy.round_log.clients] == [5]


def test_a_node_the_superlink_reports_unavailable_is_named_by_its_own_id():
    """The SuperLink answers for a node whose heartbeats stopped, from its own node id."""
    strategy = FedgateStrategy(FedgateConfig.from_flat({"federation.min-train-nodes": 1}), dict(GLOBAL))
    msgs = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), Nodes([5, 6])))
    for i, m in enumerate(msgs):  # what Grid.push_messages does
        m.metadata.__dict__["_message_id"] = f"id-{i}"
    unavailable = Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=msgs[1])
    unavailable.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
    good = {k: np.ones_like(v) for k, v in GLOBAL.items()}
    strategy.aggregate_train(1, [reply(msgs[0], good, 5), unavailable])
    assert [(f["node_id"], f["code"]) for f in strategy.round_log.failures] == [(6, 5)]
    assert strategy.round_log.dropped == []


def test_fewer_usable_updates_than_min_train_nodes_leave_the_global_state():
    strategy = FedgateStrategy(FedgateConfig.from_flat({"federation.min-train-nodes": 2}), dict(GLOBAL))
    msgs = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), Nodes([5, 6])))
    good = {k: np.ones_like(v) for k, v in GLOBAL.items()}
    arrays, metrics = strategy.aggregate_train(1, [reply(msgs[0], good, 5)])  # node 6 straggles
    assert arrays is None and metrics is None
    np.testing.assert_array_equal(strategy.global_state["a.gate_weight"], GLOBAL["a.gate_weight"])
    assert "1 usable update(s), federation.min-train-nodes is 2" in strategy.round_log.skipped
    assert [d["node_id"] for d in strategy.round_log.dropped] == [6]


def test_evaluation_stragglers_are_recorded():
    strategy = FedgateStrategy(FedgateConfig(), dict(GLOBAL))
    strategy.round_log = RoundLog()
    msgs = list(strategy.configure_evaluate(1, to_record(GLOBAL), ConfigRecord(), Nodes([5, 6])))
    replies = [Message(RecordDict({P.METRICS: MetricRecord({P.NUM_EXAMPLES: 10, "auc": 0.6})}), reply_to=msgs[0])]
    assert strategy.aggregate_evaluate(1, replies)["nodes"] == 1
    assert [(d["node_id"], d["stage"]) for d in strategy.round_log.dropped] == [(6, "evaluate")]


def test_no_usable_update_keeps_the_global_state():
    strategy = FedgateStrategy(FedgateConfig(), dict(GLOBAL))
    msgs = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), Nodes([5, 6])))
    arrays, metrics = strategy.aggregate_train(1, [Message(Error(code=0, reason="x"), reply_to=m) for m in msgs])
    assert arrays is None and metrics is None
    np.testing.assert_array_equal(strategy.global_state["a.gate_weight"], GLOBAL["a.gate_weight"])


def test_fixed_prior_sends_no_profile():
    cfg = FedgateConfig.from_flat({"federation.gate-prior": "fixed"})
    strategy = FedgateStrategy(cfg, dict(GLOBAL), profile={"a": {"token_gate": 0.3, "structural_gate": 1.0}})
    msgs = list(strategy.configure_train(2, to_record(GLOBAL), ConfigRecord(), Nodes([5, 6])))
    assert dict(msgs[0].content[P.GATE_PRIOR]) == {}


def test_federated_evaluation_mean_and_worst_auc():
    strategy = FedgateStrategy(FedgateConfig(), dict(GLOBAL))
    strategy.round_log = RoundLog()
    msgs = list(strategy.configure_evaluate(1, to_record(GLOBAL), ConfigRecord(), Nodes([5, 6, 7])))
    replies = [Message(RecordDict({P.METRICS: MetricRecord({P.NUM_EXAMPLES: 10, "auc": auc})}), reply_to=m)
               for m, auc in zip(msgs, (0.6, 0.8, float("nan")))]
    out = strategy.aggregate_evaluate(1, replies)
    assert out["auc-mean"] == pytest.approx(0.7) and out["auc-worst"] == pytest.approx(0.6)
    assert out["nodes"] == 2 and out[P.NUM_EXAMPLES] == 30


def test_sampling_waits_then_times_out_with_a_clear_error():
    cfg = FedgateConfig.from_flat({"federation.min-available-nodes": 3, "federation.round-timeout": 0.5})
    strategy = FedgateStrategy(cfg, dict(GLOBAL))
    with pytest.raises(TimeoutError, match="only 2 nodes connected"):
        list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), Nodes([1, 2])))


class AskedNodes(Nodes):
    """Nodes that answer the strategy's query for their rank and partition id; keeps who was asked."""

    def __init__(self, partitions, silent=()):
        super().__init__(sorted(partitions))
        self.partitions, self.silent, self.asked = partitions, set(silent), []

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            node = m.metadata.dst_node_id
            assert m.content[P.CONFIG][P.ASK] == P.ASK_NODE
            self.asked.append(node)
            if node in self.silent:
                replies.append(Message(Error(code=5, reason="Error: Node Unavailable"), reply_to=m))
                continue
            metrics = MetricRecord({P.ADAPTER_RANK: 2, P.PARTITION_ID: self.partitions[node]})
            replies.append(Message(RecordDict({P.METRICS: metrics}), reply_to=m))
        return replies


def sampled_partitions(cfg, grid, rounds):
    strategy = FedgateStrategy(cfg, dict(GLOBAL))
    return [sorted(grid.partitions[m.metadata.dst_node_id]
                   for m in strategy.configure_train(rnd, to_record(GLOBAL), ConfigRecord(), grid)) for rnd in rounds]


def test_a_sampled_subset_is_the_same_partitions_whatever_the_node_ids():
    cfg = FedgateConfig.from_flat({"federation.fraction-train": 0.3, "federation.min-train-nodes": 1})
    small = AskedNodes({100 + p: p for p in range(10)})
    ids = np.random.default_rng(7).permutation(10)  # another run's ids: large, in another order
    other = AskedNodes({int(9_000_000_000 + 977 * i): int(p) for i, p in enumerate(ids)})
    picks = sampled_partitions(cfg, small, range(1, 6))
    assert all(len(p) == 3 for p in picks) and len({tuple(p) for p in picks}) > 1  # rounds draw anew
    assert sampled_partitions(cfg, other, range(1, 6)) == picks
    assert sorted(small.asked) == sorted(small.partitions)  # each node asked once, not every round
    reseeded = FedgateConfig.from_flat({"federation.fraction-train": 0.3, "federation.min-train-nodes": 1,
                                        "train.seed": 1})
    assert sampled_partitions(reseeded, AskedNodes(small.partitions), range(1, 6)) != picks


def test_full_participation_asks_no_node_and_a_silent_node_sits_the_draw_out():
    everyone = AskedNodes({1: 0, 2: 1})
    strategy = FedgateStrategy(FedgateConfig.from_flat({}), dict(GLOBAL))
    assert len(list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), everyone))) == 2
    assert everyone.asked == []
    cfg = FedgateConfig.from_flat({"federation.fraction-train": 0.5, "federation.min-train-nodes": 1})
    strategy, grid = FedgateStrategy(cfg, dict(GLOBAL)), AskedNodes({1: 0, 2: 1, 3: 2, 4: 3}, silent={3})
    for rnd in (1, 2):
        msgs = list(strategy.configure_train(rnd, to_record(GLOBAL), ConfigRecord(), grid))
        assert len(msgs) == 2 and 3 not in [m.metadata.dst_node_id for m in msgs]
        assert strategy.round_log.failures == [{"node_id": 3, "reason": "Error: Node Unavailable", "stage": "query"}]
    assert sorted(grid.asked) == [1, 2, 3, 3, 4]  # the silent node is asked again the next round
    again = FedgateStrategy(cfg, dict(GLOBAL), saved=strategy.saved())  # a resumed run keeps what nodes said
    assert again.node_info == strategy.node_info == {1: {"rank": 2, "partition": 0}, 2: {"rank": 2, "partition": 1},
                                                     4: {"rank": 2, "partition": 3}}


def test_fraction_zero_skips_training():
    cfg = FedgateConfig.from_flat({"federation.fraction-train": 0.0})
    strategy = FedgateStrategy(cfg, dict(GLOBAL))
    assert list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), Nodes([1, 2]))) == []
    assert strategy.aggregate_train(1, []) == (None, None)
