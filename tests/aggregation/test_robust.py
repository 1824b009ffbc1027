"""Robust aggregation and update validation against numbers worked by hand."""

import numpy as np
import pytest

from fedgate.aggregation.robust import (best_scored, clip_update, coordinate_median, krum_scores, multi_krum, trimmed_mean, update_norm,
                                        validate_update)


def test_median_odd_count():
    deltas = [{"a": np.array([1.0, 5.0, -1.0])}, {"a": np.array([3.0, 0.0, 2.0])}, {"a": np.array([2.0, 100.0, 0.0])}]
    np.testing.assert_allclose(coordinate_median(deltas)["a"], [2.0, 5.0, 0.0])


def test_median_even_count_is_mean_of_middle_two():
    deltas = [{"a": np.array([1.0, 5.0, -1.0], dtype=np.float32)}, {"a": np.array([3.0, 0.0, 2.0], dtype=np.float32)},
              {"a": np.array([2.0, 100.0, 0.0], dtype=np.float32)}, {"a": np.array([10.0, -3.0, 4.0], dtype=np.float32)}]
    out = coordinate_median(deltas)["a"]
    # sorted columns: (1,2,3,10) -> 2.5; (-3,0,5,100) -> 2.5; (-1,0,2,4) -> 1.0
    np.testing.assert_allclose(out, [2.5, 2.5, 1.0])
    assert out.dtype == np.float32


def test_median_rejects_empty_and_mismatched_layouts():
    with pytest.raises(ValueError, match="no updates"):
        coordinate_median([])
    with pytest.raises(ValueError, match=r"update 1: key 'a' has shape \(3,\)"):
        coordinate_median([{"a": np.ones(2)}, {"a": np.ones(3)}])
    with pytest.raises(KeyError, match="different keys"):
        coordinate_median([{"a": np.ones(2)}, {"b": np.ones(2)}])


def test_trimmed_mean_drops_one_at_each_end_per_coordinate():
    # 5 clients, trim 0.2 -> floor(1.0) = 1 dropped at each end, and not the same client in each column
    deltas = [{"a": np.array([100.0, 1.0])}, {"a": np.array([1.0, -50.0])}, {"a": np.array([3.0, 3.0])},
              {"a": np.array([2.0, 0.0])}, {"a": np.array([4.0, 2.0])}]
    # column 0 sorted 1,2,3,4,100 -> (2+3+4)/3 = 3; column 1 sorted -50,0,1,2,3 -> (0+1+2)/3 = 1
    np.testing.assert_allclose(trimmed_mean(deltas, 0.2)["a"], [3.0, 1.0])
    # trim 0 is the plain mean: (100+1+3+2+4)/5 = 22, (1-50+3+0+2)/5 = -8.8
    np.testing.assert_allclose(trimmed_mean(deltas, 0.0)["a"], [22.0, -8.8])
    # 4 clients at 0.2 -> floor(0.8) = 0, nothing dropped: (100+1+3+2)/4 = 26.5
    assert trimmed_mean(deltas[:4], 0.2)["a"][0] == pytest.approx(26.5)


@pytest.mark.parametrize("frac", [0.5, -0.1, 0.7])
def test_trimmed_mean_rejects_bad_fraction(frac):
    with pytest.raises(ValueError, match=r"trim_fraction must be in \[0, 0.5\)"):
        trimmed_mean([{"a": np.ones(1)}] * 3, frac)


def test_clip_norm_5_to_1_scales_by_0_2():
    delta = {"a": np.array([3.0], dtype=np.float32), "b": np.array([[4.0]], dtype=np.float32)}
    assert update_norm(delta) == pytest.approx(5.0)  # sqrt(9 + 16)
    out, scale = clip_update(delta, 1.0)
    assert scale == pytest.approx(0.2)
    np.testing.assert_allclose(out["a"], [0.6], rtol=1e-6)
    np.testing.assert_allclose(out["b"], [[0.8]], rtol=1e-6)
    assert out["a"].dtype == np.float32 and update_norm(out) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_array_equal(delta["a"], [3.0])  # input untouched
    same, scale = clip_update(delta, 10.0)  # under the bound: unchanged
    assert scale == 1.0
    np.testing.assert_array_equal(same["b"], [[4.0]])
    with pytest.raises(ValueError, match="max_norm"):
        clip_update(delta, 0.0)


EXPECTED = {"w": ((2,), np.dtype(np.float32)), "b": ((), np.dtype(np.float32))}


def good():
    return {"w": np.array([3.0, 0.0], dtype=np.float32), "b": np.array(4.0, dtype=np.float32)}


def test_valid_update_returns_its_norm():
    assert validate_update(good(), EXPECTED) == pytest.approx(5.0)
    assert validate_update(good(), EXPECTED, max_norm=5.0) == pytest.approx(5.0)
    # expected may cover a subset of the state: only those keys are checked
    assert validate_update({"w": good()["w"]}, {"w": EXPECTED["w"]}) == pytest.approx(3.0)


def with_(**changes):
    d = good()
    d.update(changes)
    return {k: v for k, v in d.items() if v is not None}


@pytest.mark.parametrize("delta, max_norm, match", [
    (with_(b=None), 0.0, r"missing keys \['b'\]"),
    (with_(extra=np.zeros(1, dtype=np.float32)), 0.0, r"unexpected keys \['extra'\]"),
    (with_(w=np.zeros(3, dtype=np.float32)), 0.0, r"key 'w': shape \(3,\) != expected \(2,\)"),
    (with_(w=np.zeros(2, dtype=np.float64)), 0.0, "key 'w': dtype float64 != expected float32"),
    (with_(w=np.array([np.nan, 0.0], dtype=np.float32)), 0.0, r"NaN/Inf.*\['w'\]"),
    (with_(b=np.array(np.inf, dtype=np.float32)), 0.0, r"NaN/Inf.*\['b'\]"),
    (good(), 1.0, "update norm 5 exceeds bound 1"),
])
def test_validate_update_rejects(delta, max_norm, match):
    with pytest.raises(ValueError, match=match):
        validate_update(delta, EXPECTED, max_norm=max_norm)


def test_validate_update_lists_at_most_five_keys_and_checks_keys_first():
    expected = {f"k{i}": ((1,), np.float32) for i in range(7)}
    with pytest.raises(ValueError, match=r"missing keys \['k0', 'k1', 'k2', 'k3', 'k4'\] \(\+2 more\)"):
        validate_update({}, expected)
    # a missing key is reported before the wrong dtype of another
    with pytest.raises(ValueError, match="missing keys.*; unexpected keys"):
        validate_update({"w": np.zeros(2), "z": np.zeros(1)}, {"w": EXPECTED["w"], "b": EXPECTED["b"]})


def _scalars(values, split=False):
    """One update per value: {"a": [v]} or, split over two tensors, {"a": [v], "b": [v]}."""
    return [{"a": np.array([v]), **({"b": np.array([v])} if split else {})} for v in values]


def test_krum_scores_by_hand():
    # values 0 1 2 3 10, f = 1: each update's 5 - 1 - 2 = 2 nearest squared distances
    # 0: 1 + 4 = 5;  1: 1 + 1 = 2;  2: 1 + 1 = 2;  3: 1 + 4 = 5;  10: 49 + 64 = 113
    np.testing.assert_allclose(krum_scores(_scalars([0, 1, 2, 3, 10]), 1), [5, 2, 2, 5, 113])
    # the distance runs over every tensor of the update: split in two, each score doubles
    np.testing.assert_allclose(krum_scores(_scalars([0, 1, 2, 3, 10], split=True), 1), [10, 4, 4, 10, 226])


def test_multi_krum_leaves_out_the_outlier_and_weights_the_rest():
    mean, out = multi_krum(_scalars([0, 1, 2, 3, 10]), [1, 1, 1, 3, 5], byzantine=1)
    assert out == [4]
    np.testing.assert_allclose(mean["a"], [(0 + 1 + 2 + 3 * 3) / 6])  # 2.0
    mean, out = multi_krum(_scalars([0, 1, 2, 3, 10]), [1] * 5, byzantine=1, keep=1)
    assert out == [0, 2, 3, 4] and mean["a"][0] == 1.0  # plain Krum: the first of the two best


def test_a_sign_flipped_update_is_the_one_krum_drops():
    honest = [{"w": np.array([1.0, 2.0]) + e} for e in ([0.1, 0], [0, 0.1], [-0.1, 0], [0, -0.1])]
    flipped = {"w": -honest[0]["w"]}
    _, out = multi_krum([honest[0], flipped, *honest[1:]], [1.0] * 5, byzantine=1)
    assert out == [1]


def test_krum_needs_f_plus_three_updates():
    with pytest.raises(ValueError, match=r"needs at least f \+ 3 = 4"):
        krum_scores(_scalars([0, 1, 2]), 1)


def test_best_scored_drops_the_lowest_scores_and_weights_the_rest():
    mean, out = best_scored(_scalars([1.0, 2.0, 3.0, 10.0]), [1, 1, 2, 5], scores=[0.6, 0.7, 0.65, 0.4], drop=1)
    assert out == [3]
    np.testing.assert_allclose(mean["a"], [(1 + 2 + 2 * 3) / 4])  # 2.25
    _, out = best_scored(_scalars([1, 2]), [1, 1], scores=[0.5, 0.5], drop=5)
    assert out == [1]  # at least one update is kept; a tie keeps the earlier one
    with pytest.raises(ValueError, match="2 scores for 3 updates"):
        best_scored(_scalars([1, 2, 3]), [1, 1, 1], scores=[0.1, 0.2], drop=1)
