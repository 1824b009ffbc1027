"""LoRA-aware aggregation: average the low-rank updates ``B A``, not the factors.

Averaging ``A`` and ``B`` separately does not average the update: ``mean(B) mean(A) != mean(B A)``.
The ``exact`` rule averages the products ``B_k A_k`` (so clients may train different ranks) and
re-factorizes the mean by truncated SVD to the server's rank, computed from the stacked factors
without forming the full-size mean. Also here: zero-padding and truncation for heterogeneous
ranks, rescaling between LoRA scalings (``alpha / r`` differs between ranks), and per-module
(gate) weights for gate-weighted averaging.
"""

from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np

from fedgate.aggregation.fedavg import Params, _check_same_layout
from fedgate.aggregation.gates import STRUCTURAL_GATE, TOKEN_GATE

LORA_A, LORA_B = ".lora_A", ".lora_B"
RESIDUAL = ".lora_residual"  # a dense (d_out, d_in) update the server sets (adapter.dense-residual)
ALL = "*"  # per-module weight mappings: the weight of keys whose module is not in the mapping
Weight = float | Mapping[str, float]


def module_of(key: str) -> str:
    """The module a state key belongs to: the key without its last dotted component ('' if none)."""
    return key.rpartition(".")[0]


def lora_modules(keys: Iterable[str]) -> list[str]:
    """Sorted names of the modules that have both a ``.lora_A`` and a ``.lora_B`` key."""
    keys = set(keys)
    a = {k[: -len(LORA_A)] for k in keys if k.endswith(LORA_A)}
    b = {k[: -len(LORA_B)] for k in keys if k.endswith(LORA_B)}
    if a ^ b:
        raise ValueError(f"module {sorted(a ^ b)[0]!r} has only one of {LORA_A!r} and {LORA_B!r}")
    return sorted(a)


def lora_rank(state: Mapping[str, np.ndarray], module: str) -> int:
    """Rank of ``module``'s adapter: the rows of ``A`` (r, d_in), which must be the columns of ``B`` (d_out, r)."""
    a, b = np.shape(state[module + LORA_A]), np.shape(state[module + LORA_B])
    if len(a) != 2 or len(b) != 2 or a[0] != b[1]:
        raise ValueError(f"module {module!r}: lora_A has shape {a} and lora_B has shape {b}, "
                         f"expected (r, d_in) and (d_out, r)")
    return int(a[0])


def _factors64(state: Mapping[str, np.ndarray], module: str) -> tuple[np.ndarray, np.ndarray]:
    """``(B, A)`` of one module in float64, their shapes checked."""
    lora_rank(state, module)
    return np.asarray(state[module + LORA_B], np.float64), np.asarray(state[module + LORA_A], np.float64)


def _product(state: Mapping[str, np.ndarray], module: str) -> np.ndarray:
    """``B @ A`` of one module in float64."""
    b, a = _factors64(state, module)
    return b @ a


def _svd(m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Thin SVD by LAPACK's gesdd, and by gesvd where gesdd does not converge: OpenBLAS's
    gesdd fails on some finite matrices that gesvd decomposes (OpenMathLib/OpenBLAS#3044)."""
    try:
        return np.linalg.svd(m, full_matrices=False)
    except np.linalg.LinAlgError:
        import scipy.linalg

        return scipy.linalg.svd(m, full_matrices=False, lapack_driver="gesvd")


def _truncated(u: np.ndarray, s: np.ndarray, vt: np.ndarray, rank: int,
               shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, float]:
    """Rank-``rank`` factors (B, A) of ``shape``'s matrix from its thin SVD, and the relative
    truncation error."""
    if rank < 1:
        raise ValueError(f"factorize: rank must be >= 1, got {rank}")
    b, a = np.zeros((shape[0], rank)), np.zeros((rank, shape[1]))
    if not np.any(s):
        return b, a, 0.0
    r = min(rank, s.size)
    u, vt = u[:, :r], vt[:r]
    # fix the SVD's sign freedom: the largest-magnitude entry of each column of U is positive
    sign = np.where(u[np.argmax(np.abs(u), axis=0), np.arange(r)] < 0, -1.0, 1.0)
    root = np.sqrt(s[:r])
    b[:, :r] = u * (sign * root)
    a[:r] = (sign * root)[:, None] * vt
    return b, a, float(np.linalg.norm(s[r:]) / np.linalg.norm(s))


def _factorize64(m: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`factorize` in float64."""
    if m.ndim != 2 or not np.all(np.isfinite(m)):
        raise ValueError(f"factorize: need a finite 2-d matrix, got shape {m.shape}")
    return _truncated(*_svd(m), rank, m.shape)


def _factorize_product64(b: np.ndarray, a: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """:func:`factorize` of ``b @ a`` (float64, ``b`` (d_out, k), ``a`` (k, d_in)) without
    forming it: with thin QR ``b = Q_b R_b`` and ``a^T = Q_a R_a``, ``b a = Q_b (R_b R_a^T) Q_a^T``,
    so the SVD of the small core gives the product's. The same factors, up to rounding, for a
    k-by-k SVD in place of a d_out-by-d_in one. With k >= min(d_out, d_in) the core is no
    smaller, and the product itself is decomposed."""
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(a))):
        raise ValueError(f"factorize: need finite factors, got shapes {b.shape} and {a.shape}")
    if b.shape[1] >= min(b.shape[0], a.shape[1]):
        return _factorize64(b @ a, rank)
    qb, rb = np.linalg.qr(b)
    qa, ra = np.linalg.qr(a.T)
    u, s, vt = _svd(rb @ ra.T)
    return _truncated(qb @ u, s, vt @ qa.T, rank, (b.shape[0], a.shape[1]))


def factorize(product: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Best rank-``rank`` factors ``B`` (d_out, rank), ``A`` (rank, d_in) of ``product`` (d_out, d_in).

    Truncated SVD with the singular values split evenly, ``B = U sqrt(S)``, ``A = sqrt(S) Vt``, and
    a fixed sign convention so that equal inputs give identical factors. Components are ordered by
    singular value, so the first ``r`` rows/columns are the best rank-``r`` factors. A rank above
    ``min(d_out, d_in)`` is reached with zero rows of ``A`` and zero columns of ``B``. The third
    value is the relative truncation error ``||M - B A||_F / ||M||_F`` (0.0 for a zero matrix).
    Computed in float64; the factors come back in the product's (floating) dtype."""
    p = np.asarray(product)
    dtype = p.dtype if np.issubdtype(p.dtype, np.floating) else np.dtype(np.float64)
    b, a, err = _factorize64(p.astype(np.float64), rank)
    return b.astype(dtype), a.astype(dtype), err


def _weights_for(weights: Sequence[Weight], module: str) -> np.ndarray:
    """Each client's weight for ``module``, normalised to sum 1: a float, or the mapping's entry for
    ``module``, falling back to its ``"*"`` entry."""
    w = []
    for i, wi in enumerate(weights):
        if isinstance(wi, Mapping):
            if module not in wi and ALL not in wi:
                raise KeyError(f"client {i}: no weight for module {module!r} and no {ALL!r} entry")
            wi = wi.get(module, wi.get(ALL))
        w.append(float(wi))
    w = np.asarray(w, dtype=np.float64)
    if not np.all(np.isfinite(w)) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"module {module!r}: weights must be finite, >= 0 and not all 0, got {w.tolist()}")
    return w / w.sum()


def _mean_key(states: Sequence[Mapping[str, np.ndarray]], w: np.ndarray, key: str) -> np.ndarray:
    """Weighted mean of one key over the clients in float64, in client 0's dtype."""
    ref = np.asarray(states[0][key])
    acc = np.zeros(ref.shape, dtype=np.float64)
    for i, (wk, s) in enumerate(zip(w, states)):
        if np.shape(s[key]) != ref.shape:
            raise ValueError(f"client {i}: key {key!r} has shape {np.shape(s[key])}, client 0 has {ref.shape}")
        acc += wk * np.asarray(s[key], dtype=np.float64)
    return acc.astype(ref.dtype)


def _check_clients(states: Sequence[Mapping[str, np.ndarray]], weights: Sequence[Weight], what: str) -> None:
    if not states:
        raise ValueError(f"{what}: no clients to aggregate")
    if len(weights) != len(states):
        raise ValueError(f"{what}: {len(states)} clients but {len(weights)} weights")


def exact_aggregate(locals_: Sequence[Params], weights: Sequence[Weight], rank: int) -> tuple[Params, dict[str, float]]:
    """The ``exact`` rule over the clients' local states: ``M = sum_k w_k B_k A_k / sum_k w_k`` per
    LoRA module, factorized to ``rank``; every other key is the weighted mean.

    Clients may have different LoRA ranks (only the products' shapes must agree). ``weights`` are
    one float per client, or one ``{module: weight}`` mapping per client (gate-weighted), where
    keys of modules not in the mapping use its ``"*"`` entry. Returns the new state (rank ``rank``
    for every LoRA module, each key in client 0's dtype) and ``{module: relative truncation error}``."""
    _check_clients(locals_, weights, "exact_aggregate")
    ref = locals_[0]
    for i, s in enumerate(locals_[1:], start=1):
        if set(s) != set(ref):
            raise KeyError(f"client {i} and client 0 have different keys: {sorted(set(s) ^ set(ref))[:5]}")
    lora: Params = {}
    errors: dict[str, float] = {}
    for m in lora_modules(ref):
        w = _weights_for(weights, m)
        factors = [_factors64(s, m) for s in locals_]
        shape = (factors[0][0].shape[0], factors[0][1].shape[1])
        for i, (bk, ak) in enumerate(factors):
            if (bk.shape[0], ak.shape[1]) != shape:
                raise ValueError(f"client {i}: module {m!r} has B A of shape {(bk.shape[0], ak.shape[1])}, "
                                 f"client 0 has {shape}")
        # the mean product sum_k w_k B_k A_k is [w_1 B_1 ... w_K B_K] [A_1; ...; A_K]
        stacked_b = np.hstack([wk * bk for wk, (bk, _) in zip(w, factors)])
        stacked_a = np.vstack([ak for _, ak in factors])
        b, a, errors[m] = _factorize_product64(stacked_b, stacked_a, rank)
        lora[m + LORA_B] = b.astype(np.asarray(ref[m + LORA_B]).dtype)
        lora[m + LORA_A] = a.astype(np.asarray(ref[m + LORA_A]).dtype)
    out = {k: lora[k] if k in lora else _mean_key(locals_, _weights_for(weights, module_of(k)), k) for k in ref}
    return out, errors


def refactor_to_rank(state: Mapping[str, np.ndarray], rank: int) -> tuple[Params, dict[str, float]]:
    """Every LoRA module's ``B A`` re-factorized to ``rank`` (e.g. the global state for a client
    training another rank), other keys copied; also ``{module: relative truncation error}``."""
    out = {k: np.array(v, copy=True) for k, v in state.items()}
    errors: dict[str, float] = {}
    for m in lora_modules(state):
        b, a, errors[m] = _factorize_product64(*_factors64(state, m), rank)
        out[m + LORA_B], out[m + LORA_A] = b.astype(out[m + LORA_B].dtype), a.astype(out[m + LORA_A].dtype)
    return out, errors


def pad_to_rank(state: Mapping[str, np.ndarray], rank: int) -> Params:
    """Zero rows appended to every ``A`` and zero columns to every ``B`` up to ``rank``: the same
    ``B A``. Raises if a module's rank is already above ``rank``. Other keys copied."""
    out = {k: np.array(v, copy=True) for k, v in state.items()}
    for m in lora_modules(state):
        r = lora_rank(state, m)
        if r > rank:
            raise ValueError(f"pad_to_rank: module {m!r} has rank {r} > {rank}")
        out[m + LORA_A] = np.pad(out[m + LORA_A], ((0, rank - r), (0, 0)))
        out[m + LORA_B] = np.pad(out[m + LORA_B], ((0, 0), (0, rank - r)))
    return out


def truncate_to_rank(state: Mapping[str, np.ndarray], rank: int) -> Params:
    """The first ``rank`` rows of every ``A`` and columns of every ``B`` (the best rank-``rank`` part
    after :func:`factorize`). Raises if a module's rank is below ``rank``. Other keys copied."""
    out = {k: np.array(v, copy=True) for k, v in state.items()}
    for m in lora_modules(state):
        r = lora_rank(state, m)
        if r < rank:
            raise ValueError(f"truncate_to_rank: module {m!r} has rank {r} < {rank}")
        out[m + LORA_A], out[m + LORA_B] = out[m + LORA_A][:rank].copy(), out[m + LORA_B][:, :rank].copy()
    return out


def rescale_factors(state: Mapping[str, np.ndarray], factor: float) -> Params:
    """Every ``B`` multiplied by ``factor`` (``A`` and other keys copied), so that every ``B A``
    is multiplied by ``factor``. Moves an adapter between two LoRA scalings: factors trained
    under scaling ``s_from`` give the same update ``s B A`` under ``s_to`` after
    ``rescale_factors(state, s_from / s_to)``. The whole factor goes on B, so a fresh adapter
    (B = 0) keeps its A at the initial size, and a delta maps back linearly."""
    if not (np.isfinite(factor) and factor > 0):
        raise ValueError(f"rescale_factors: factor must be finite and > 0, got {factor}")
    out = {k: np.array(v, copy=True) for k, v in state.items()}
    if factor == 1.0:
        return out
    for m in lora_modules(state):
        key = m + LORA_B
        out[key] = (np.asarray(out[key], np.float64) * factor).astype(out[key].dtype)
    return out


def start_error(global_state: Mapping[str, np.ndarray], node_state: Mapping[str, np.ndarray],
                node_scale: float) -> float:
    """How far a node's starting update is from the global one: the largest relative Frobenius
    error ``||node_scale B_k A_k - B A|| / ||B A||`` over the LoRA modules (0 for equal
    functions; ``node_scale`` = the node's LoRA scaling over the global one)."""
    worst = 0.0
    for m in lora_modules(global_state):
        target = _product(global_state, m)
        norm = np.linalg.norm(target)
        if norm > 0:
            worst = max(worst, float(np.linalg.norm(node_scale * _product(node_state, m) - target) / norm))
    return worst


def gate_weights(num_examples: Sequence[int],
                 gate_stats: Sequence[Mapping[str, Mapping[str, float]]]) -> list[dict[str, float]]:
    """Per-client ``{module: n_k * token_gate * structural_gate}`` plus ``"*": n_k`` for non-adapter keys.

    The product of the gates is the client's effective mean activation of that adapter: clients that
    use an adapter shape it. A client without statistics for a module (reported by another client),
    or without one of the two gates, counts that gate as 1 (no gate = always on)."""
    if len(num_examples) != len(gate_stats):
        raise ValueError(f"gate_weights: {len(num_examples)} clients but {len(gate_stats)} gate statistics")
    modules = sorted({m for s in gate_stats for m in s})
    out = []
    for i, (n, stats) in enumerate(zip(num_examples, gate_stats)):
        w = {ALL: float(n)}
        for m in modules:
            s = stats.get(m, {})
            g = float(s.get(TOKEN_GATE, 1.0)) * float(s.get(STRUCTURAL_GATE, 1.0))
            if not np.isfinite(g) or g < 0:
                raise ValueError(f"gate_weights: client {i}, module {m!r}: gate product is {g}")
            w[m] = float(n) * g
        out.append(w)
    return out


def module_weighted_mean(deltas: Sequence[Params], weights: Sequence[Mapping[str, float]]) -> Params:
    """Per-key weighted mean whose weights are the key's module entry (or ``"*"``) of each client's
    mapping: gate-weighted FedAvg of deltas. Float64 accumulation, each key in its own dtype."""
    _check_clients(deltas, weights, "module_weighted_mean")
    _check_same_layout(deltas)
    return {k: _mean_key(deltas, _weights_for(weights, module_of(k)), k) for k in deltas[0]}
