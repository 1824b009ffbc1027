"""Each strategy family through the Flower Strategy on real Flower messages (no network),
with hand-worked numbers: what is sent, what is aggregated, what is rejected."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from fedgate.config import FedgateConfig
from fedgate.federated import protocol as P
from fedgate.strategies.scaffold import CONTROL_DELTA, SERVER_CONTROL
from server.strategy import FedgateStrategy, from_record, to_record, wire_bytes
from tests.server.test_strategy import Nodes, serverapp_identity  # noqa: F401  (fixture)

F = np.float32
# one adapter "m" of rank 2 on a 2 x 2 layer, plus a head bias
GLOBAL = {
    "m.lora_A": np.array([[1.0, 0.0], [0.0, 1.0]], F),
    "m.lora_B": np.array([[0.0, 0.0], [0.0, 0.0]], F),
    "m.gate_weight": np.zeros(2, F),
    "m.struct_logit": np.array([2.0], F),
    "head.bias": np.array([0.5], F),
}


def cfg(**flat):
    return FedgateConfig.from_flat({f"federation.{k}": v for k, v in flat.items()})


def reply(msg, delta, n, struct=0.9, token=0.5, control_delta=None):
    content = RecordDict({
        P.ARRAYS: to_record(delta),
        P.METRICS: MetricRecord({P.NUM_EXAMPLES: n}),
        P.GATE_TOKEN: MetricRecord({m: token for m in struct} if isinstance(struct, dict) else {"m": token}),
        P.GATE_STRUCT: MetricRecord(struct if isinstance(struct, dict) else {"m": struct}),
    })
    if control_delta is not None:
        content[CONTROL_DELTA] = to_record(control_delta)
    return Message(content=content, reply_to=msg)


def zeros_like(state, **values):
    out = {k: np.zeros_like(v) for k, v in state.items()}
    out.update({k: np.asarray(v, F) for k, v in values.items()})
    return out


def start(c, nodes=(1, 2), state=GLOBAL, grid=None):
    strategy = FedgateStrategy(c, {k: v.copy() for k, v in state.items()})
    msgs = list(strategy.configure_train(1, to_record(strategy.global_state), ConfigRecord(), grid or Nodes(nodes)))
    return strategy, msgs


def test_exact_averages_products_where_fedavg_ab_averages_factors():
    # client 1: B1 A = [[2,0],[0,0]]; client 2: B2 A' with A' = A + dA = [[0,0],[0,1]] ... built as deltas
    d1 = zeros_like(GLOBAL, **{"m.lora_B": [[2.0, 0.0], [0.0, 0.0]]})
    d2 = zeros_like(GLOBAL, **{"m.lora_A": [[-1.0, 0.0], [0.0, 0.0]], "m.lora_B": [[0.0, 0.0], [0.0, 2.0]]})
    locals_ = [{k: GLOBAL[k] + d[k] for k in GLOBAL} for d in (d1, d2)]
    mean_product = np.mean([s["m.lora_B"] @ s["m.lora_A"] for s in locals_], axis=0)  # [[1,0],[0,1]]
    np.testing.assert_allclose(mean_product, [[1.0, 0.0], [0.0, 1.0]])
    results = {}
    for name in ("exact", "fedavg-ab"):
        strategy, msgs = start(cfg(strategy=name))
        strategy.aggregate_train(1, [reply(msgs[0], d1, 10), reply(msgs[1], d2, 10)])
        g = strategy.global_state
        results[name] = g["m.lora_B"] @ g["m.lora_A"]
        if name == "exact":
            assert strategy.round_log.rule["truncation_error"]["m"] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_allclose(results["exact"], mean_product, atol=1e-6)
    # naive: mean(B) mean(A) = [[1,0],[0,1]] @ [[0.5,0],[0,1]] = [[0.5,0],[0,1]]
    np.testing.assert_allclose(results["fedavg-ab"], [[0.5, 0.0], [0.0, 1.0]], atol=1e-6)


def test_ffa_sends_and_receives_b_only():
    strategy, msgs = start(cfg(strategy="ffa"))
    sent = from_record(msgs[0].content[P.ARRAYS])
    assert "m.lora_A" not in sent and "m.lora_B" in sent
    delta = {k: np.ones_like(v) for k, v in sent.items()}
    strategy.aggregate_train(1, [reply(m, delta, 5) for m in msgs])
    np.testing.assert_array_equal(strategy.global_state["m.lora_A"], GLOBAL["m.lora_A"])  # A never moves
    np.testing.assert_allclose(strategy.global_state["m.lora_B"], GLOBAL["m.lora_B"] + 1)
    full_bytes = start(cfg())[0].round_log.array_bytes_down
    assert strategy.round_log.array_bytes_down < full_bytes


def test_fedadam_steps_the_mean_delta_like_a_hand_stepped_adam():
    strategy, msgs = start(cfg(strategy="fedadam", **{"server-lr": 0.1, "server-tau": 0.01}))
    delta = zeros_like(GLOBAL, **{"head.bias": [0.2]})
    strategy.aggregate_train(1, [reply(m, delta, 5) for m in msgs])
    m = 0.1 * 0.2  # (1 - beta1) * delta
    v = 0.99 * 0.01 ** 2 + 0.01 * 0.2 ** 2  # beta2 * tau^2 + (1 - beta2) * delta^2
    assert strategy.global_state["head.bias"][0] == pytest.approx(0.5 + 0.1 * m / (np.sqrt(v) + 0.01), rel=1e-5)
    np.testing.assert_array_equal(strategy.global_state["m.gate_weight"], GLOBAL["m.gate_weight"])  # zero delta


def test_median_ignores_one_outlier_and_bad_updates_are_rejected():
    c = cfg(strategy="median", **{"max-update-norm": 100.0})
    strategy, msgs = start(c, nodes=(1, 2, 3, 4, 5, 6))
    good = [zeros_like(GLOBAL, **{"head.bias": [b]}) for b in (0.1, 0.2, 5.0)]
    nan = zeros_like(GLOBAL, **{"head.bias": [np.nan]})
    wrong_shape = {**zeros_like(GLOBAL), "m.gate_weight": np.zeros(3, F)}
    huge = zeros_like(GLOBAL, **{"head.bias": [1e6]})
    replies = [reply(m, d, 10) for m, d in zip(msgs, good + [nan, wrong_shape, huge])]
    arrays, _ = strategy.aggregate_train(1, replies)
    assert arrays is not None
    assert strategy.global_state["head.bias"][0] == pytest.approx(0.5 + 0.2)  # median of 0.1, 0.2, 5.0
    reasons = {r["node_id"]: r["reason"] for r in strategy.round_log.rejected}
    assert set(reasons) == {4, 5, 6}
    assert "non-finite" in reasons[4] and "shape" in reasons[5] and "exceeds bound 100" in reasons[6]
    assert len(strategy.round_log.clients) == 3


def test_krum_leaves_out_the_sign_flipped_client_by_node_id():
    strategy, msgs = start(cfg(strategy="krum", **{"byzantine-clients": 1}), nodes=(1, 2, 3, 4, 5))
    honest = [zeros_like(GLOBAL, **{"head.bias": [b], "m.gate_weight": [1.0, 1.0]}) for b in (0.1, 0.2, 0.3, 0.4)]
    flipped = zeros_like(GLOBAL, **{"head.bias": [-0.25], "m.gate_weight": [-1.0, -1.0]})
    strategy.aggregate_train(1, [reply(m, d, n) for m, d, n in zip(msgs, honest + [flipped], (10, 10, 10, 30, 10))])
    assert strategy.round_log.rule["excluded"] == [5]
    # the four honest updates, weighted by examples: (0.1 + 0.2 + 0.3 + 3 * 0.4) / 6 = 0.3
    assert strategy.global_state["head.bias"][0] == pytest.approx(0.5 + 0.3)
    np.testing.assert_allclose(strategy.global_state["m.gate_weight"], [1.0, 1.0])


def test_validated_scores_each_update_alone_and_leaves_out_the_worst():
    scored = []

    def scorer(state, pruned):  # stands in for the server's validation AUC: here, a high head bias is good
        scored.append(float(state["head.bias"][0]))
        return float(state["head.bias"][0])

    c = cfg(strategy="validated", **{"byzantine-clients": 1})
    strategy = FedgateStrategy(c, {k: v.copy() for k, v in GLOBAL.items()}, scorer=scorer)
    msgs = list(strategy.configure_train(1, to_record(GLOBAL), ConfigRecord(), Nodes((1, 2, 3))))
    deltas = [zeros_like(GLOBAL, **{"head.bias": [b]}) for b in (0.2, -0.3, 0.4)]
    strategy.aggregate_train(1, [reply(m, d, n) for m, d, n in zip(msgs, deltas, (10, 10, 30))])
    assert scored == pytest.approx([0.7, 0.2, 0.9])  # global 0.5 + each delta alone
    assert strategy.round_log.rule["excluded"] == [2]
    assert strategy.global_state["head.bias"][0] == pytest.approx(0.5 + (10 * 0.2 + 30 * 0.4) / 40)
    with pytest.raises(ValueError, match="give the strategy a scorer"):
        FedgateStrategy(c, dict(GLOBAL))


def test_wrong_dtype_and_a_foreign_rank_are_rejected():
    strategy, msgs = start(cfg())
    f64 = {k: v.astype(np.float64) for k, v in zeros_like(GLOBAL).items()}
    rank1 = {**zeros_like(GLOBAL), "m.lora_A": np.zeros((1, 2), F), "m.lora_B": np.zeros((2, 1), F)}
    strategy.aggregate_train(1, [reply(msgs[0], f64, 5), reply(msgs[1], rank1, 5)])
    reasons = [r["reason"] for r in strategy.round_log.rejected]
    assert "dtype float64" in reasons[0] and "shape (1, 2)" in reasons[1]


def test_gate_weighting_weights_a_layer_by_its_gate():
    strategy, msgs = start(cfg(weighting="gates"))
    d1 = zeros_like(GLOBAL, **{"m.gate_weight": [1.0, 1.0], "head.bias": [1.0]})
    d2 = zeros_like(GLOBAL, **{"m.gate_weight": [-1.0, -1.0], "head.bias": [-1.0]})
    # layer m: weights 10 * 0.9 * 0.9 = 8.1 and 10 * 0.1 * 0.9 = 0.9 -> (8.1 - 0.9) / 9 = 0.8; head: equal -> 0
    strategy.aggregate_train(1, [reply(msgs[0], d1, 10, token=0.9), reply(msgs[1], d2, 10, token=0.1)])
    np.testing.assert_allclose(strategy.global_state["m.gate_weight"], [0.8, 0.8], atol=1e-6)
    np.testing.assert_allclose(strategy.global_state["head.bias"], [0.5], atol=1e-6)


def test_pruning_stops_sending_an_adapter_after_patience_rounds():
    c = cfg(**{"prune-threshold": 0.5, "prune-patience": 2})
    strategy, msgs = start(c)
    full = strategy.round_log.array_bytes_down
    for rnd in (1, 2):
        strategy.aggregate_train(rnd, [reply(m, zeros_like(GLOBAL), 5, struct=0.2) for m in msgs])
        assert strategy.pruned == ([] if rnd == 1 else ["m"])
        msgs = list(strategy.configure_train(rnd + 1, None, ConfigRecord(), Nodes([1, 2])))
    sent = from_record(msgs[0].content[P.ARRAYS])
    assert set(sent) == {"head.bias"} and msgs[0].content[P.CONFIG][P.PRUNED] == "m"
    assert strategy.round_log.array_bytes_down < full
    arrays_meta = strategy.saved()[1]
    assert arrays_meta["pruned"] == ["m"] and arrays_meta["streaks"] == {"m": 2}


def test_prune_max_share_caps_how_many_insertion_points_are_ever_pruned():
    c = cfg(**{"prune-threshold": 0.5, "prune-patience": 1, "prune-max-share": 0.5})
    strategy, msgs = start(c)
    gates = {"m": 0.2, "n": 0.1, "o": 0.3, "p": 0.4}  # four insertion points report gates, all below 0.5
    for rnd in (1, 2):  # only half of them may ever go, the lowest gates first, and none more later
        strategy.aggregate_train(rnd, [reply(m, zeros_like(GLOBAL), 5, struct=gates) for m in msgs])
        assert strategy.pruned == ["m", "n"]
        msgs = list(strategy.configure_train(rnd + 1, None, ConfigRecord(), Nodes([1, 2])))
    assert "newly_pruned" not in strategy.round_log.rule


def test_personal_gates_stay_off_the_wire():
    strategy, msgs = start(cfg(**{"personal-gates": True}))
    sent = from_record(msgs[0].content[P.ARRAYS])
    assert "m.struct_logit" not in sent
    strategy.aggregate_train(1, [reply(m, {k: np.zeros_like(v) for k, v in sent.items()}, 5, struct=0.5)
                                 for m in msgs])
    # the server's copy routes like the clients' mean structural gate (logit 0.5 = 0)
    np.testing.assert_allclose(strategy.global_state["m.struct_logit"], [0.0], atol=1e-6)


def test_scaffold_sends_c_and_updates_it_from_control_deltas():
    strategy, msgs = start(cfg(strategy="scaffold"), nodes=(1, 2, 3, 4))
    c = from_record(msgs[0].content[SERVER_CONTROL])
    assert all(np.all(v == 0) for v in c.values()) and set(c) == set(GLOBAL)
    dcs = [zeros_like(GLOBAL, **{"head.bias": [0.4]}), zeros_like(GLOBAL, **{"head.bias": [0.8]})]
    strategy.aggregate_train(1, [reply(m, zeros_like(GLOBAL), 5, control_delta=dc)
                                 for m, dc in zip(msgs[:2], dcs)])
    assert strategy.rule.control["head.bias"][0] == pytest.approx(0.5 * 0.6)
    missing = list(strategy.configure_train(2, None, ConfigRecord(), Nodes([1, 2, 3, 4])))
    strategy.aggregate_train(2, [reply(missing[0], zeros_like(GLOBAL), 5)])  # no control delta
    assert "scaffold-dc" in strategy.round_log.rejected[0]["reason"]


class RankGrid(Nodes):
    """Nodes that answer the strategy's rank query."""

    def __init__(self, ranks):
        super().__init__(sorted(ranks))
        self.ranks = ranks

    def send_and_receive(self, messages, timeout=None):
        return [Message(RecordDict({P.METRICS: MetricRecord({P.ADAPTER_RANK: self.ranks[m.metadata.dst_node_id],
                                                             P.PARTITION_ID: m.metadata.dst_node_id})}),
                        reply_to=m) for m in messages]


@pytest.mark.parametrize("strategy_name", ["exact", "fedavg"])
def test_heterogeneous_ranks_are_asked_sent_at_their_rank_and_aggregated(strategy_name):
    c = cfg(strategy=strategy_name, **{"heterogeneous-ranks": True})
    start_state = {**GLOBAL, "m.lora_B": np.array([[1.0, 0.0], [0.0, 0.5]], F)}
    strategy, msgs = start(c, state=start_state, grid=RankGrid({1: 1, 2: 2}))
    assert strategy.node_ranks == {1: 1, 2: 2}
    sent = {m.metadata.dst_node_id: from_record(m.content[P.ARRAYS]) for m in msgs}
    assert sent[1]["m.lora_A"].shape == (1, 2) and sent[2]["m.lora_A"].shape == (2, 2)
    if strategy_name == "exact":  # the best rank-1 view of B A = diag(1, .5), times alpha/2 over alpha/1
        np.testing.assert_allclose(sent[1]["m.lora_B"] @ sent[1]["m.lora_A"], [[0.5, 0.0], [0.0, 0.0]], atol=1e-6)
    # node 1 starts from the global update less its second component: half of it, in norm
    assert strategy.round_log.rule["start_truncation_error"] == {"1": pytest.approx(0.5 / np.sqrt(1.25), abs=1e-5)}
    replies = [reply(m, zeros_like(sent[m.metadata.dst_node_id]), 5) for m in msgs]
    strategy.aggregate_train(1, replies)
    assert not strategy.round_log.rejected
    g = strategy.global_state
    assert g["m.lora_A"].shape == (2, 2)
    if strategy_name == "exact":  # mean of diag(1, 0) and diag(1, .5)
        np.testing.assert_allclose(g["m.lora_B"] @ g["m.lora_A"], [[1.0, 0.0], [0.0, 0.25]], atol=1e-6)


def test_strategy_state_survives_a_checkpoint_round_trip():
    strategy, msgs = start(cfg(strategy="fedyogi"))
    strategy.aggregate_train(1, [reply(m, zeros_like(GLOBAL, **{"head.bias": [0.3]}), 5) for m in msgs])
    arrays, meta = strategy.saved()
    again = FedgateStrategy(cfg(strategy="fedyogi"), dict(strategy.global_state), saved=(arrays, meta))
    assert set(again.opt_state) == set(strategy.opt_state)
    for k, v in strategy.opt_state.items():
        np.testing.assert_array_equal(again.opt_state[k], v)
    assert wire_bytes(msgs[0].content) > 0


def test_validated_scores_updates_of_other_ranks_at_the_global_rank():
    seen = []

    def scorer(state, pruned):
        seen.append(state["m.lora_A"].shape)
        return float(state["m.lora_B"].sum())

    c = cfg(strategy="validated", **{"heterogeneous-ranks": True, "byzantine-clients": 0})
    rank3 = {**GLOBAL, "m.lora_A": np.eye(3, 2, dtype=F), "m.lora_B": np.ones((2, 3), F)}
    strategy = FedgateStrategy(c, rank3, scorer=scorer)
    msgs = list(strategy.configure_train(1, None, ConfigRecord(), RankGrid({1: 2, 2: 3})))
    sent = {m.metadata.dst_node_id: from_record(m.content[P.ARRAYS]) for m in msgs}
    strategy.aggregate_train(1, [reply(m, zeros_like(sent[m.metadata.dst_node_id], **{"head.bias": [0.1]}), 5)
                                 for m in msgs])
    assert not strategy.round_log.rejected and seen == [(3, 2), (3, 2)]  # a (2, 2) delta would not add


def test_rules_that_pad_to_the_global_rank_leave_out_a_node_of_a_larger_rank():
    c = FedgateConfig.from_flat({"federation.strategy": "hetlora", "federation.heterogeneous-ranks": True,
                                 "adapter.r": 2})
    strategy, msgs = start(c, grid=RankGrid({1: 2, 2: 4}))
    assert [m.metadata.dst_node_id for m in msgs] == [1] and strategy.node_ranks == {1: 2}
    failure = strategy.round_log.failures[0]
    assert failure["node_id"] == 2 and "above the global rank 2" in failure["reason"]
    c = cfg(strategy="fedavg", **{"heterogeneous-ranks": True})  # a rule that cuts the extra part admits it
    strategy, msgs = start(c, grid=RankGrid({1: 2, 2: 4}))
    assert len(msgs) == 2 and strategy.node_ranks == {1: 2, 2: 4}
