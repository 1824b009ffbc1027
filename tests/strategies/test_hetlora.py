"""HetLoRA: norm-weighted average of zero-padded factors, and the clients' rank self-pruning, hand-worked."""

import numpy as np
import pytest
import torch

from fedgate import strategies
from fedgate.aggregation.server_opt import server_optimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.federated.client import ClientTask, clear_cache
from fedgate.inject import adapter_modules
from fedgate.state import adapter_state, to_numpy
from fedgate.strategies.hetlora import LIVE_RANK, RankSelfPruning, norm_weights


def test_norm_weights_by_hand():
    locals_ = [{"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[2.0]])},
               {"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[0.5]])}]
    assert norm_weights(locals_, [1.0, 3.0]) == [{"*": 1.0, "m": 2.0}, {"*": 3.0, "m": 1.5}]


def test_clients_whose_adapter_does_more_count_more(tiny_cfg):
    """Global B = A = 1. Client 0 ends at B = 2 (|BA| = 2), client 1 at B = 0.5 (|BA| = 0.5):
    weights 0.8 and 0.2, so B = 1 + 0.8 * 1 + 0.2 * (-0.5) = 1.7; the head is the plain mean."""
    cfg = tiny_cfg(**{"federation.strategy": "hetlora", "federation.weighting": "uniform"})
    glob = {"m.lora_A": np.array([[1.0]]), "m.lora_B": np.array([[1.0]]), "head.w": np.array([0.0])}
    deltas = [{"m.lora_A": np.array([[0.0]]), "m.lora_B": np.array([[1.0]]), "head.w": np.array([1.0])},
              {"m.lora_A": np.array([[0.0]]), "m.lora_B": np.array([[-0.5]]), "head.w": np.array([3.0])}]
    rule = strategies.create(cfg.federation)
    out = rule.aggregate(glob, [ClientUpdate(i, d, 10) for i, d in enumerate(deltas)], server_optimizer("sgd", 1.0),
                         {}, strategies.RoundInputs(sent=[glob, glob], rank=1))
    assert out.params["m.lora_B"][0, 0] == pytest.approx(1.7)
    assert out.params["m.lora_A"][0, 0] == pytest.approx(1.0)
    assert out.params["head.w"][0] == pytest.approx(2.0)
    assert out.info["norm_weight_share"] == [0.8, 0.2]


def test_hetlora_refuses_a_global_rank_below_a_client_rank_and_central_dp(tiny_cfg):
    with pytest.raises(ValueError, match="at least the largest"):
        strategies.check(tiny_cfg(**{"federation.strategy": "hetlora", "federation.heterogeneous-ranks": True,
                                     "federation.client-ranks": "4,16", "adapter.r": 8}))
    with pytest.raises(ValueError, match="federation.dp=central"):
        strategies.check(tiny_cfg(**{"federation.strategy": "hetlora", "federation.dp": "central",
                                     "federation.clip-norm": 1.0, "federation.dp-noise": 1.0}))


# ---------------------------------------------------------------- rank self-pruning
class _LoRA(torch.nn.Module):
    """What rank self-pruning reads of an adapter: its factors and whether it is on."""

    def __init__(self, a: np.ndarray, b: np.ndarray) -> None:
        super().__init__()
        self.lora_A = torch.nn.Parameter(torch.tensor(a, dtype=torch.float64))
        self.lora_B = torch.nn.Parameter(torch.tensor(b, dtype=torch.float64))
        self.enabled = True


def _layers() -> list[_LoRA]:
    """Rank 4: A rows 1..4 (times ones of width 2), B columns 1..4 (times ones of height 3)."""
    comp = np.arange(1.0, 5.0)
    return [_LoRA(np.outer(comp, np.ones(2)), np.outer(np.ones(3), comp)),
            _LoRA(np.outer(comp, np.ones(2)), 2 * np.outer(np.ones(3), comp))]


def test_the_tail_is_the_summed_norm_product_of_the_last_components_by_hand():
    """decay 0.5 at rank 4: the tail is components 2 and 3 (values 3 and 4). ||A_tail|| =
    sqrt(2 (9 + 16)) = sqrt(50), ||B_tail|| = sqrt(3 (9 + 16)) = sqrt(75) and twice that for
    the second layer: tail = 3 sqrt(50 * 75)."""
    pruning = RankSelfPruning(_layers(), 0.5, 0.1, {})
    assert pruning.live == 4 and pruning.pruned_rank == 2
    assert float(pruning.tail().detach()) == pytest.approx(3 * np.sqrt(50 * 75))
    assert float(pruning.extra_loss().detach()) == pytest.approx(0.3 * np.sqrt(50 * 75))


def test_a_client_prunes_only_when_its_tail_shrank_since_its_last_round():
    size = 3 * np.sqrt(50 * 75)
    first = RankSelfPruning(_layers(), 0.5, 0.1, {})  # no last round: nothing to compare with
    _, kept, metrics = first.finish({})
    assert kept[LIVE_RANK]["live-rank"].tolist() == [4] and kept[LIVE_RANK]["tail"][0] == pytest.approx(size)
    assert metrics["hetlora-pruned-components"] == 0 and metrics["hetlora-state-kept"] == 0
    grew = RankSelfPruning(_layers(), 0.5, 0.1, {"live-rank": np.array([4]), "tail": np.array([size / 2])})
    assert grew.finish({})[1][LIVE_RANK]["live-rank"].tolist() == [4]
    layers = _layers()
    shrank = RankSelfPruning(layers, 0.5, 0.1, {"live-rank": np.array([4]), "tail": np.array([2 * size])})
    _, kept, metrics = shrank.finish({})
    assert kept[LIVE_RANK]["live-rank"].tolist() == [2] and np.isnan(kept[LIVE_RANK]["tail"][0])
    assert metrics["hetlora-live-rank"] == 2 and metrics["hetlora-pruned-components"] == 2
    assert metrics["hetlora-state-kept"] == 1
    for m in layers:  # the pruned components are zero, the kept ones untouched
        assert not m.lora_A[2:].any() and not m.lora_B[:, 2:].any()
        assert m.lora_A[:2].detach().numpy()[:, 0].tolist() == [1.0, 2.0]
    # after a prune the next round only records the new tail (compared at an unchanged rank)
    after = RankSelfPruning(layers, 0.5, 0.1, dict(kept[LIVE_RANK]))
    _, kept, metrics = after.finish({})
    assert after.live == 2 and kept[LIVE_RANK]["live-rank"].tolist() == [2] and metrics["hetlora-state-kept"] == 1


def test_pruned_components_start_at_zero_and_stay_there_through_optimizer_steps():
    layers = _layers()
    pruning = RankSelfPruning(layers, 0.5, 0.1, {"live-rank": np.array([3]), "tail": np.array([1.0])})
    assert not layers[0].lora_A[3:].any() and layers[0].lora_A[2].all()  # zeroed when the round starts
    with torch.no_grad():  # a pruned B column moved by something else: A's pruned row now gets a gradient
        layers[0].lora_B[:, 3] = 1.0
    opt = torch.optim.AdamW([p for m in layers for p in m.parameters()], lr=0.1)
    for _ in range(3):
        loss = sum((m.lora_B @ m.lora_A).sum() for m in layers) + pruning.extra_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        pruning.after_step(opt)
    for m in layers:
        assert not m.lora_A[3:].any() and not m.lora_B[:, 3:].any()
        assert m.lora_B[:, :3].abs().sum() > 0


def test_a_model_without_an_enabled_adapter_has_nothing_to_prune():
    with pytest.raises(ValueError, match="at least one enabled LoRA adapter"):
        RankSelfPruning([], 0.5, 0.1, {})


def test_a_rank_one_client_never_prunes_below_one_component():
    one = RankSelfPruning([_LoRA(np.ones((1, 2)), np.ones((3, 1)))], 0.9, 0.1,
                          {"live-rank": np.array([1]), "tail": np.array([np.inf])})
    assert float(one.tail()) == 0 and one.finish({})[1][LIVE_RANK]["live-rank"].tolist() == [1]


def test_self_pruning_settings_are_checked(tiny_cfg):
    with pytest.raises(ValueError, match="train.rank-prune-decay=0.5 is HetLoRA's rank self-pruning"):
        strategies.check(tiny_cfg(**{"federation.strategy": "fedavg-ab", "train.rank-prune-decay": 0.5}))
    with pytest.raises(ValueError, match="train.rank-prune-decay must be in"):
        tiny_cfg(**{"federation.strategy": "hetlora", "train.rank-prune-decay": 1.0})
    with pytest.raises(ValueError, match="use engine.name=torch"):
        strategies.check(tiny_cfg(**{"federation.strategy": "hetlora", "train.rank-prune-decay": 0.5,
                                     "engine.name": "deepspeed"}))
    hetlora = strategies.get("hetlora")
    assert hetlora.records_in_use(tiny_cfg(**{"federation.strategy": "hetlora"})) == ()
    assert hetlora.records_in_use(tiny_cfg(**{"federation.strategy": "hetlora",
                                              "train.rank-prune-decay": 0.5})) == (LIVE_RANK,)


def test_a_self_pruning_client_replies_minus_the_global_value_for_what_it_pruned(tiny_cfg):
    """A real client round: pruned components are zero after training, so their delta is
    ``-start`` (the server's average pulls them towards zero with this client's weight)."""
    clear_cache()
    cfg = tiny_cfg(**{"federation.strategy": "hetlora", "train.rank-prune-decay": 0.5, "adapter.r": 4})
    task = ClientTask(cfg, 0, 2)
    glob = to_numpy(adapter_state(task.model))
    glob = {k: v + 0.01 if k.endswith(("lora_A", "lora_B")) else v for k, v in glob.items()}  # non-zero B too
    first = task.train(glob, server_round=1, kept={})
    assert first.metrics["hetlora-live-rank"] == 4 and first.kept[LIVE_RANK]["live-rank"].tolist() == [4]
    kept = {LIVE_RANK: {"live-rank": np.array([4]), "tail": np.array([np.inf])}}  # any tail has shrunk
    second = task.train(glob, server_round=2, kept=kept)
    assert second.metrics["hetlora-pruned-components"] == 2 and second.kept[LIVE_RANK]["live-rank"].tolist() == [2]
    for k in second.delta:
        if k.endswith("lora_A"):
            np.testing.assert_allclose(second.delta[k][2:], -glob[k][2:], atol=1e-7)
            assert np.abs(second.delta[k][:2]).max() > 0
        if k.endswith("lora_B"):
            np.testing.assert_allclose(second.delta[k][:, 2:], -glob[k][:, 2:], atol=1e-7)
    # evaluated on its own rows, the client's model is the global one without those components
    task.evaluate(glob, kept=second.kept)
    for m in adapter_modules(task.model).values():
        assert not m.lora_A[2:].any() and m.lora_A[:2].all()
