"""LoRA-FAIR (Bian et al., "LoRA-FAIR: Federated LoRA Fine-Tuning with Aggregation and
Initialization Refinement", ICCV 2025): average A and B as FedAvg does, then correct the
averaged B by the ``Delta B`` that brings ``(B + Delta B) A`` closest to the average of the
clients' products, with a penalty that keeps the correction small. The server sends the
refined factors, so clients start the next round from (nearly) the exact average without a
dense term, and the bytes are FedAvg's.

The correction is a ridge regression with a closed form: for ``M = mean(B_k A_k)``,

    Delta B = (M - B A) A^T (A A^T + lambda I)^-1,   lambda = LAMBDA * ||A||_F^2 / r

Where fedgate departs from the paper: the paper measures the match with a similarity term and
tunes its penalty per task; here the match is the Frobenius distance and ``lambda`` is fixed
relative to A's energy (``LAMBDA``), so the correction is scale-free. What the refined factors
still miss of ``M`` is logged per round (``fair_residual``, relative, worst module).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from fedgate.aggregation.lora import LORA_A, LORA_B, lora_modules
from fedgate.aggregation.server_opt import ServerOptimizer
from fedgate.aggregation.update import ClientUpdate
from fedgate.strategies.base import Aggregated, RoundInputs, Strategy
from fedgate.strategies.fedex import mean_product, plain_average

LAMBDA = 1e-3  # the correction's ridge penalty, relative to ||A||_F^2 / r


def refine_b(b: np.ndarray, a: np.ndarray, target: np.ndarray, lam: float = LAMBDA) -> np.ndarray:
    """``B + Delta B``: the B whose product with ``a`` is closest to ``target`` under the
    ridge penalty ``lam * ||A||_F^2 / r * ||Delta B||^2``."""
    r = a.shape[0]
    gram = a @ a.T
    ridge = lam * float(np.trace(gram)) / r
    if not ridge > 0:  # A is zero: no B can move the product
        return b.copy()
    correction = np.linalg.solve(gram + ridge * np.eye(r), a @ (target - b @ a).T).T
    return b + correction


class LoRAFair(Strategy):
    name = "lora-fair"
    summary = ("A and B averaged, then B corrected (ridge) so that B A comes closest to the mean of the clients' "
               "B_k A_k; no dense term")
    paper = "LoRA-FAIR: Bian et al., ICCV 2025"
    lora_only = True
    per_layer_weights = False
    sums_updates = False  # the correction depends on the clients' products
    sets_factors = True  # refines the plain average

    def aggregate(self, params: Mapping[str, np.ndarray], updates: Sequence[ClientUpdate],
                  optimizer: ServerOptimizer, opt_state: Mapping[str, np.ndarray],
                  inputs: RoundInputs | None = None) -> Aggregated:
        new, state, locals_, examples, info = plain_average(self, params, updates, optimizer, opt_state, inputs)
        missed = []
        for m in lora_modules(locals_[0]):
            a = np.asarray(new[m + LORA_A], np.float64)
            target = mean_product(locals_, examples, m)
            b = refine_b(np.asarray(new[m + LORA_B], np.float64), a, target)
            new[m + LORA_B] = b.astype(np.asarray(params[m + LORA_B]).dtype)
            norm = np.linalg.norm(target)
            missed.append(float(np.linalg.norm(target - b @ a) / norm) if norm > 0 else 0.0)
        info["fair_residual"] = round(max(missed), 6) if missed else 0.0
        mean_delta = {k: new[k] - np.asarray(params[k]) for k in new}
        return Aggregated(new, state, mean_delta, info)
