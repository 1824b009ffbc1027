"""Client-level DP: the noise added matches sigma * C / n, clipping bounds every client's
share of the sum, epsilon is the accountant's, a target epsilon is met, and the
combinations the mechanism does not cover are refused at config time with the reason."""

import math

import numpy as np
import pytest

pytest.importorskip("dp_accounting")
import dp_accounting as dp  # noqa: E402
from dp_accounting import rdp  # noqa: E402

from fedgate.aggregation.privacy import (epsilon, noise_for_epsilon, noise_rng, privacy_record,  # noqa: E402
                                         privatize_update)
from fedgate import strategies  # noqa: E402
from fedgate.aggregation.update import ClientUpdate  # noqa: E402
from fedgate.config import FedgateConfig  # noqa: E402

PRIVATE = {"federation.dp": "central", "federation.dp-noise": 2.0, "federation.clip-norm": 1.0,
           "federation.weighting": "uniform", "federation.gate-prior": "fixed", "train.head-init": "zero"}


def _fed(**over):
    return strategies.check(FedgateConfig.from_flat({**PRIVATE, **over})).federation


def _aggregate(fed, deltas, seed=0, sampled=None):
    params = {k: np.zeros_like(v) for k, v in deltas[0].items()}
    updates = [ClientUpdate(node_id=i, delta=d, num_examples=10 * (i + 1)) for i, d in enumerate(deltas)]
    rule = strategies.create(fed)
    opt = rule.optimizer()
    return rule.aggregate(params, updates, opt, opt.init(params), strategies.RoundInputs(
        noise=noise_rng(seed, 1), noise_multiplier=fed.noise_multiplier(), sampled=sampled))


def test_central_noise_on_the_mean_has_standard_deviation_sigma_clip_over_n():
    fed = _fed(**{"federation.dp-noise": 2.0, "federation.clip-norm": 0.5})
    n = 4
    zeros = [{"a": np.zeros(200_000, np.float32), "b": np.zeros((100, 500), np.float32)} for _ in range(n)]
    result = _aggregate(fed, zeros)
    noise = np.concatenate([result.mean_delta["a"].ravel(), result.mean_delta["b"].ravel()])
    want = 2.0 * 0.5 / n  # sigma * C / n = 0.25
    assert abs(noise.std() / want - 1) < 0.05 and abs(noise.mean()) < 0.01 * want
    assert result.info["dp_noise_std"] == pytest.approx(want)
    again = _aggregate(fed, zeros)  # seeded: a study reruns exactly
    assert np.array_equal(again.mean_delta["a"], result.mean_delta["a"])
    fresh = _aggregate(fed, zeros, seed=None)  # the default: the operating system's entropy
    assert not np.array_equal(fresh.mean_delta["a"], result.mean_delta["a"])


def test_central_noise_is_divided_by_the_clients_sampled_not_those_that_answered():
    fed = _fed(**{"federation.dp-noise": 2.0, "federation.clip-norm": 0.5})
    zeros = [{"a": np.zeros(200_000, np.float32)} for _ in range(3)]  # 3 of 5 sampled clients answered
    result = _aggregate(fed, zeros, sampled=5)
    assert abs(result.mean_delta["a"].std() / (2.0 * 0.5 / 5) - 1) < 0.05
    assert result.info["dp_noise_std"] == pytest.approx(0.2)


def test_under_local_dp_the_server_does_not_clip_the_noised_releases_again():
    fed = _fed(**{"federation.dp": "local", "federation.dp-noise": 1.0, "federation.clip-norm": 1.0,
                  "federation.weighting": "examples"})
    rng = np.random.default_rng(0)
    releases = [{"a": rng.normal(size=10_000).astype(np.float32)} for _ in range(3)]  # norms about 100 >> C
    result = _aggregate(fed, releases)
    want = sum(10 * (i + 1) * r["a"].astype(np.float64) for i, r in enumerate(releases)) / 60  # example-weighted
    assert np.allclose(result.mean_delta["a"], want, atol=1e-5) and "clip_scale" not in result.info


def test_clipping_bounds_a_huge_update_and_the_mean_is_unweighted():
    # sigma tiny: what is left is the clipped mean, so each client's share can be read off
    fed = _fed(**{"federation.dp-noise": 1e-9, "federation.clip-norm": 1.0})
    huge = {"a": np.full(100, 1e6, np.float32)}
    small = {"a": np.full(100, 0.01, np.float32)}  # norm 0.1: not clipped
    result = _aggregate(fed, [huge, small, small, small])
    clipped_huge = np.full(100, 0.1)  # the huge update scaled to norm C = 1 (100 coordinates of 0.1)
    want = (clipped_huge + 3 * 0.01) / 4  # unweighted, whatever num_examples said
    assert np.allclose(result.mean_delta["a"], want, atol=1e-6)
    assert result.info["clip_scale"][0] == pytest.approx(1.0 / (1e6 * 10)) and result.info["clip_scale"][1] == 1.0
    assert np.linalg.norm(result.info["clip_scale"][0] * huge["a"]) <= 1.0 + 1e-9


def test_local_dp_clips_then_adds_noise_of_sigma_clip_per_coordinate():
    delta = {"a": np.full(400_000, 3.0, np.float32)}  # norm 1897: clipped to C = 2
    out, scale = privatize_update(delta, 2.0, 1.5, noise_rng(0, 1, client=3))
    clipped = delta["a"].astype(np.float64) * scale
    assert np.linalg.norm(clipped) == pytest.approx(2.0, rel=1e-5)
    noise = out["a"].astype(np.float64) - clipped
    assert abs(noise.std() / 3.0 - 1) < 0.05  # sigma * C = 3
    assert out["a"].dtype == np.float32


@pytest.mark.parametrize("q, rounds, sigma", [(1.0, 10, 1.1), (0.25, 20, 0.9), (0.5, 3, 3.0)])
def test_central_epsilon_is_the_accountants_value(q, rounds, sigma):
    accountant = rdp.RdpAccountant()
    step = dp.GaussianDpEvent(sigma) if q == 1.0 else dp.PoissonSampledDpEvent(q, dp.GaussianDpEvent(sigma))
    accountant.compose(dp.SelfComposedDpEvent(step, rounds))
    assert epsilon("central", sigma, q, rounds, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-12)


def test_local_epsilon_accounts_for_replace_one_sensitivity_and_grows_with_rounds():
    accountant = rdp.RdpAccountant()
    accountant.compose(dp.SelfComposedDpEvent(dp.GaussianDpEvent(4.0 / 2), 5))
    assert epsilon("local", 4.0, 0.5, 5, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5))
    assert epsilon("local", 4.0, 0.5, 6, 1e-5) > epsilon("local", 4.0, 0.5, 5, 1e-5)
    assert epsilon("central", 1.0, 1.0, 0, 1e-5) == 0.0 and math.isinf(epsilon("central", 0.0, 1.0, 3, 1e-5))


@pytest.mark.parametrize("mode, target", [("central", 8.0), ("central", 2.0), ("local", 8.0)])
def test_the_noise_solved_for_a_target_epsilon_meets_it_and_no_less_noise_would(mode, target):
    sigma = noise_for_epsilon(mode, target, 0.5, 4, 1e-5)
    assert epsilon(mode, sigma, 0.5, 4, 1e-5) <= target
    assert epsilon(mode, sigma * 0.99, 0.5, 4, 1e-5) > target
    fed = _fed(**{"federation.dp": mode, "federation.dp-noise": 0.0, "federation.dp-epsilon": target,
                  "federation.fraction-train": 0.5, "federation.rounds": 4})
    assert fed.noise_multiplier() == pytest.approx(sigma)
    record = privacy_record(fed, sigma, [0.5] * 4)
    assert record["noise_multiplier"] == sigma and record["epsilon"] <= target


def test_epsilon_composes_the_rate_each_round_really_sampled_at():
    accountant = rdp.RdpAccountant()
    accountant.compose(dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(0.25, dp.GaussianDpEvent(1.0)), 2))
    accountant.compose(dp.SelfComposedDpEvent(dp.PoissonSampledDpEvent(0.5, dp.GaussianDpEvent(1.0)), 1))
    assert epsilon("central", 1.0, [0.25, 0.5, 0.25], 3, 1e-5) == pytest.approx(accountant.get_epsilon(1e-5))
    # min-train-nodes raised the rate from 0.25 to 0.5: the loss is larger than fraction-train suggests
    assert epsilon("central", 1.0, [0.5] * 8, 8, 1e-5) > epsilon("central", 1.0, 0.25, 8, 1e-5)


@pytest.mark.parametrize("over, reason", [
    ({"federation.clip-norm": 0.0}, "needs federation.clip-norm > 0"),
    ({"federation.dp-epsilon": 8.0}, "exactly one of federation.dp-noise"),
    ({"federation.dp-noise": 0.0}, "exactly one of federation.dp-noise"),
    ({"federation.strategy": "median"}, "combines the updates one by one"),
    ({"federation.strategy": "exact"}, "combines the updates one by one"),
    ({"federation.strategy": "scaffold"}, "control variate"),
    ({"federation.dp": "local", "federation.weighting": "gates"}, "needs federation.weighting=uniform"),
    ({"federation.weighting": "examples"}, "needs federation.weighting=uniform"),
    ({"federation.gate-prior": "global"}, "gate statistics"),
    ({"federation.prune-threshold": 0.5}, "gate statistics"),
    ({"train.head-init": "ridge"}, "use train.head-init=zero"),
    ({"federation.dp": "secret"}, "federation.dp must be one of"),
])
def test_what_the_mechanism_does_not_cover_is_refused_at_config_time(over, reason):
    with pytest.raises(ValueError, match=reason):
        strategies.check(FedgateConfig.from_flat({**PRIVATE, **over}))


def test_rules_that_only_need_the_sum_are_accepted_and_local_dp_allows_any_server_rule():
    for strategy in ("fedavg", "fedavg-ab", "fedprox", "fedadam", "ffa"):
        assert _fed(**{"federation.strategy": strategy}).noise_multiplier() == 2.0
    for strategy in ("median", "exact", "validated"):  # post-processing of releases already private
        assert _fed(**{"federation.dp": "local", "federation.strategy": strategy,
                       "federation.weighting": "examples"}).dp == "local"
