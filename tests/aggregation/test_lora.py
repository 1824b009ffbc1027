"""LoRA-aware aggregation (average B A, then re-factorize) against numbers worked by hand."""

import numpy as np
import pytest

from fedgate.aggregation.lora import (_factorize_product64, _svd, exact_aggregate, factorize, gate_weights,
                                      lora_modules, lora_rank, module_of, module_weighted_mean, pad_to_rank,
                                      refactor_to_rank, truncate_to_rank)

Q = "backbone.encoder.layer.1.attention.self.query"


def lora(b, a, dtype=np.float64, **extra):
    """A one-module state: ``Q.lora_B = b``, ``Q.lora_A = a`` plus any other keys."""
    state = {f"{Q}.lora_B": np.array(b, dtype=dtype), f"{Q}.lora_A": np.array(a, dtype=dtype)}
    state.update({k: np.array(v, dtype=dtype) for k, v in extra.items()})
    return state


def ba(state, module=Q):
    return state[f"{module}.lora_B"].astype(np.float64) @ state[f"{module}.lora_A"].astype(np.float64)


def tail(m, r):
    """Relative error of the best rank-r approximation: the norm of the dropped singular values."""
    s = np.linalg.svd(m, compute_uv=False)
    return np.linalg.norm(s[r:]) / np.linalg.norm(s)


def test_module_of_and_lora_modules():
    assert module_of(f"{Q}.lora_A") == Q and module_of("head.bias") == "head" and module_of("scale") == ""
    keys = [f"{Q}.lora_B", "b.lora_A", f"{Q}.gate_bias", "b.lora_B", f"{Q}.lora_A", "head.weight"]
    assert lora_modules(keys) == ["b", Q]
    with pytest.raises(ValueError, match="'b' has only one"):
        lora_modules(["b.lora_A", "head.weight"])


def test_lora_rank_checks_that_the_factors_agree():
    assert lora_rank(lora(np.zeros((4, 3)), np.zeros((3, 5))), Q) == 3
    with pytest.raises(ValueError, match=r"lora_A has shape \(2, 5\) and lora_B has shape \(4, 3\)"):
        lora_rank(lora(np.zeros((4, 3)), np.zeros((2, 5))), Q)


def test_exact_aggregate_averages_the_products_not_the_factors():
    # B1 A1 = [[1, 0], [0, 0]], B2 A2 = [[0, 0], [0, 1]]: mean(BA) = diag(.5, .5)
    c1 = lora([[1.0], [0.0]], [[1.0, 0.0]], **{"head.bias": [2.0]})
    c2 = lora([[0.0], [1.0]], [[0.0, 1.0]], **{"head.bias": [4.0]})
    naive = np.mean([c1[f"{Q}.lora_B"], c2[f"{Q}.lora_B"]], axis=0) @ np.mean([c1[f"{Q}.lora_A"], c2[f"{Q}.lora_A"]], axis=0)
    np.testing.assert_allclose(naive, [[0.25, 0.25], [0.25, 0.25]])  # mean(B) mean(A): wrong
    out, err = exact_aggregate([c1, c2], [1.0, 1.0], rank=2)
    np.testing.assert_allclose(ba(out), [[0.5, 0.0], [0.0, 0.5]], atol=1e-6)
    assert not np.allclose(ba(out), naive)
    assert err[Q] == pytest.approx(0.0, abs=1e-12)
    assert out[f"{Q}.lora_A"].shape == (2, 2) and out[f"{Q}.lora_B"].shape == (2, 2)
    np.testing.assert_allclose(out["head.bias"], [3.0])
    # rank 1: s = (.5, .5), so the error is sqrt(.25) / sqrt(.5) = 1/sqrt(2)
    out1, err1 = exact_aggregate([c1, c2], [1.0, 1.0], rank=1)
    assert err1[Q] == pytest.approx(np.sqrt(0.25) / np.sqrt(0.5)) and err1[Q] == pytest.approx(0.70710678)
    assert np.linalg.norm(ba(out1) - np.diag([0.5, 0.5])) / np.linalg.norm(np.diag([0.5, 0.5])) == pytest.approx(err1[Q])


def test_exact_aggregate_random_clients_full_and_low_rank():
    rng = np.random.default_rng(0)
    clients = [lora(rng.normal(size=(5, 3)), rng.normal(size=(3, 4)), **{"head.weight": rng.normal(size=(2, 5))})
               for _ in range(3)]
    w = [1.0, 2.0, 3.0]
    mean = sum(wk * ba(c) for wk, c in zip(w, clients)) / 6.0
    out, err = exact_aggregate(clients, w, rank=4)  # rank = min(5, 4): exact
    np.testing.assert_allclose(ba(out), mean, atol=1e-10)
    assert err[Q] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(out["head.weight"], sum(wk * c["head.weight"] for wk, c in zip(w, clients)) / 6.0)
    out2, err2 = exact_aggregate(clients, w, rank=2)
    assert err2[Q] == pytest.approx(tail(mean, 2), rel=1e-10)
    u, s, vt = np.linalg.svd(mean)
    np.testing.assert_allclose(ba(out2), (u[:, :2] * s[:2]) @ vt[:2], atol=1e-10)  # the best rank-2 approximation


def test_exact_aggregate_heterogeneous_ranks():
    # rank 1: B1 A1 = [[1, 0, 0], [0, 0, 0]]; rank 2: B2 A2 = [[1, 1, 0], [0, 0, 2]]; mean = [[1, .5, 0], [0, 0, 1]]
    c1 = lora([[1.0], [0.0]], [[1.0, 0.0, 0.0]])
    c2 = lora([[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])
    out, err = exact_aggregate([c1, c2], [1, 1], rank=2)
    np.testing.assert_allclose(ba(out), [[1.0, 0.5, 0.0], [0.0, 0.0, 1.0]], atol=1e-12)
    assert err[Q] == pytest.approx(0.0, abs=1e-12)
    # zero-padding c1 to rank 2 and averaging the factors instead gives [[1, .5, 0], [0, 0, .5]]
    p1 = pad_to_rank(c1, 2)
    naive = ((p1[f"{Q}.lora_B"] + c2[f"{Q}.lora_B"]) / 2) @ ((p1[f"{Q}.lora_A"] + c2[f"{Q}.lora_A"]) / 2)
    np.testing.assert_allclose(naive, [[1.0, 0.5, 0.0], [0.0, 0.0, 0.5]])


def test_exact_aggregate_per_module_weights():
    # module Q weighted 3 : 1 -> .75 / .25; head.* uses "*" (1 : 1)
    c1 = lora([[2.0]], [[1.0]], **{f"{Q}.gate_bias": [1.0], "head.bias": [0.0]})  # B A = 2
    c2 = lora([[0.0]], [[1.0]], **{f"{Q}.gate_bias": [5.0], "head.bias": [4.0]})  # B A = 0
    out, err = exact_aggregate([c1, c2], [{Q: 3.0, "*": 1.0}, {Q: 1.0, "*": 1.0}], rank=1)
    assert ba(out)[0, 0] == pytest.approx(0.75 * 2.0)  # 1.5 = sqrt(1.5) * sqrt(1.5)
    assert out[f"{Q}.lora_B"][0, 0] == pytest.approx(np.sqrt(1.5))
    np.testing.assert_allclose(out[f"{Q}.gate_bias"], [0.75 * 1.0 + 0.25 * 5.0])  # 2.0
    np.testing.assert_allclose(out["head.bias"], [2.0])
    with pytest.raises(KeyError, match="client 1: no weight for module 'head'"):
        exact_aggregate([c1, c2], [{Q: 3.0, "*": 1.0}, {Q: 1.0}], rank=1)
    with pytest.raises(ValueError, match=f"module '{Q}': weights .* not all 0"):
        exact_aggregate([c1, c2], [{Q: 0.0, "*": 1.0}, {Q: 0.0, "*": 1.0}], rank=1)


def test_exact_aggregate_rejects_bad_layouts():
    c1 = lora(np.ones((2, 1)), np.ones((1, 3)), **{"head.weight": np.ones((2, 2))})
    with pytest.raises(ValueError, match=r"client 1: key 'head.weight' has shape \(3, 2\)"):
        exact_aggregate([c1, lora(np.ones((2, 2)), np.ones((2, 3)), **{"head.weight": np.ones((3, 2))})], [1, 1], 1)
    with pytest.raises(ValueError, match=rf"client 1: module '{Q}' has B A of shape \(2, 4\)"):
        exact_aggregate([c1, lora(np.ones((2, 1)), np.ones((1, 4)), **{"head.weight": np.ones((2, 2))})], [1, 1], 1)
    with pytest.raises(KeyError, match="different keys"):
        exact_aggregate([c1, lora(np.ones((2, 1)), np.ones((1, 3)))], [1, 1], 1)
    with pytest.raises(ValueError, match="2 clients but 1 weights"):
        exact_aggregate([c1, c1], [1], 1)


def test_factorize_is_deterministic_and_signs_are_fixed():
    m = np.random.default_rng(1).normal(size=(6, 4))
    b1, a1, e1 = factorize(m, 3)
    b2, a2, e2 = factorize(m.copy(), 3)
    assert np.array_equal(b1, b2) and np.array_equal(a1, a2) and e1 == e2
    assert b1.shape == (6, 3) and a1.shape == (3, 4) and e1 == pytest.approx(tail(m, 3))
    assert (b1[np.argmax(np.abs(b1), axis=0), np.arange(3)] > 0).all()  # largest entry of each column of B positive
    # the split is symmetric: B^T B = A A^T = diag(s)
    np.testing.assert_allclose(b1.T @ b1, a1 @ a1.T, atol=1e-10)
    b_neg, a_neg, _ = factorize(-m, 3)
    np.testing.assert_allclose(b_neg @ a_neg, -(b1 @ a1), atol=1e-10)


def test_factorize_zero_matrix_and_rank_above_min_dim():
    b, a, e = factorize(np.zeros((3, 2)), 2)
    assert e == 0.0 and not b.any() and not a.any() and b.shape == (3, 2) and a.shape == (2, 2)
    m = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 3.0]])
    b, a, e = factorize(m, 4)  # min dim 2: two zero components appended
    assert b.shape == (2, 4) and a.shape == (4, 3) and e == pytest.approx(0.0, abs=1e-12)
    assert not b[:, 2:].any() and not a[2:].any()
    np.testing.assert_allclose(b @ a, m, atol=1e-12)
    with pytest.raises(ValueError, match="rank must be >= 1"):
        factorize(m, 0)


@pytest.mark.parametrize("d_out, k, d_in", [(7, 3, 9), (9, 2, 6), (4, 6, 5), (6, 2, 2)])  # the last two: dense
def test_factorizing_a_product_through_its_factors_matches_the_dense_svd(d_out, k, d_in):
    rng = np.random.default_rng(d_out * 100 + k)
    b, a = rng.normal(size=(d_out, k)), rng.normal(size=(k, d_in))
    for rank in (1, 2, 5):
        fb, fa, err = _factorize_product64(b, a, rank)
        db, da, dense_err = factorize(b @ a, rank)
        r = min(rank, k)  # the same sign convention, so the same factors; past the product's rank
        np.testing.assert_allclose(fb[:, :r], db[:, :r], atol=1e-10)  # the dense SVD's components are
        np.testing.assert_allclose(fa[:r], da[:r], atol=1e-10)  # square roots of rounding (~1e-8),
        assert not fb[:, r:].any() and not fa[r:].any()  # the core's are exact zeros
        assert err == pytest.approx(dense_err, abs=1e-12)
    assert _factorize_product64(np.zeros((3, 2)), rng.normal(size=(2, 4)), 2)[2] == 0.0
    with pytest.raises(ValueError, match="finite factors"):
        _factorize_product64(np.full((3, 2), np.inf), rng.normal(size=(2, 4)), 2)


def test_svd_falls_back_to_gesvd_where_gesdd_does_not_converge(monkeypatch):
    m = np.random.default_rng(3).normal(size=(6, 4))

    def no_convergence(*args, **kwargs):
        raise np.linalg.LinAlgError("SVD did not converge")

    monkeypatch.setattr(np.linalg, "svd", no_convergence)
    u, s, vt = _svd(m)
    np.testing.assert_allclose((u * s) @ vt, m, atol=1e-12)
    b, a, err = factorize(m, 4)
    np.testing.assert_allclose(b @ a, m, atol=1e-12)


def test_refactor_to_rank():
    rng = np.random.default_rng(2)
    state = lora(rng.normal(size=(4, 2)), rng.normal(size=(2, 5)), **{"head.bias": [1.0, 2.0]})
    same, err = refactor_to_rank(state, 2)  # the state's own rank: B A preserved
    np.testing.assert_allclose(ba(same), ba(state), atol=1e-10)
    assert err[Q] == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_array_equal(same["head.bias"], [1.0, 2.0])
    up, _ = refactor_to_rank(state, 3)  # a larger rank: shapes follow, product unchanged
    assert up[f"{Q}.lora_A"].shape == (3, 5) and up[f"{Q}.lora_B"].shape == (4, 3)
    np.testing.assert_allclose(ba(up), ba(state), atol=1e-10)
    down, err1 = refactor_to_rank(state, 1)
    assert err1[Q] == pytest.approx(tail(ba(state), 1), rel=1e-10)


def test_pad_truncate_round_trip():
    state = lora([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]], [[1.0, 0.0], [0.0, -1.0]], **{"head.bias": [7.0]})
    padded = pad_to_rank(state, 4)
    assert padded[f"{Q}.lora_A"].shape == (4, 2) and padded[f"{Q}.lora_B"].shape == (3, 4)
    np.testing.assert_array_equal(ba(padded), ba(state))
    back = truncate_to_rank(padded, 2)
    assert all(np.array_equal(back[k], state[k]) for k in state)
    with pytest.raises(ValueError, match=f"module '{Q}' has rank 2 < 3"):
        truncate_to_rank(state, 3)
    with pytest.raises(ValueError, match=f"module '{Q}' has rank 2 > 1"):
        pad_to_rank(state, 1)


def test_gate_weights_and_module_weighted_mean():
    stats = [{Q: {"token_gate": 0.5, "structural_gate": 0.4}}, {}]  # client 1 has no gate statistics
    w = gate_weights([10, 4], stats)
    assert w[0] == pytest.approx({"*": 10.0, Q: 10 * 0.5 * 0.4})  # 2.0
    assert w[1] == pytest.approx({"*": 4.0, Q: 4.0})  # no gates = always on
    d1 = {f"{Q}.lora_A": np.array([3.0]), "head.weight": np.array([7.0])}
    d2 = {f"{Q}.lora_A": np.array([0.0]), "head.weight": np.array([0.0])}
    out = module_weighted_mean([d1, d2], w)
    np.testing.assert_allclose(out[f"{Q}.lora_A"], [2.0 / 6.0 * 3.0])  # 1.0
    np.testing.assert_allclose(out["head.weight"], [10.0 / 14.0 * 7.0])  # 5.0
    with pytest.raises(ValueError, match="2 clients but 1 gate statistics"):
        gate_weights([10, 4], stats[:1])
    with pytest.raises(ValueError, match=r"update 1: key 'head.weight' has shape \(2,\)"):
        module_weighted_mean([d1, {**d2, "head.weight": np.zeros(2)}], w)


def test_dtype_is_preserved():
    rng = np.random.default_rng(3)
    clients = [lora(rng.normal(size=(3, 2)), rng.normal(size=(2, 3)), dtype=np.float32, **{"head.bias": [1.0]})
               for _ in range(2)]
    out, _ = exact_aggregate(clients, [1, 1], rank=3)  # two rank-2 products: the mean has rank 3
    assert all(v.dtype == np.float32 for v in out.values())
    np.testing.assert_allclose(ba(out), (ba(clients[0]) + ba(clients[1])) / 2, atol=1e-5)
    re, _ = refactor_to_rank(clients[0], 1)
    assert all(v.dtype == np.float32 for v in re.values())
    b, a, _ = factorize(np.eye(2, dtype=np.float32), 1)
    assert b.dtype == np.float32 and a.dtype == np.float32
    assert factorize(np.eye(2), 1)[0].dtype == np.float64 and factorize(np.eye(2, dtype=int), 1)[0].dtype == np.float64
    assert module_weighted_mean(clients, [{"*": 1.0}, {"*": 3.0}])["head.bias"].dtype == np.float32
