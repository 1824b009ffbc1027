"""``validated``: the server applies each update alone to the global state, scores it on its
own validation rows (ROC-AUC), and averages the K - f best (f = ``federation.byzantine-clients``).
A rule for conflicting feedback: a client whose labels are flipped produces an update that
makes the global model worse on clean rows. The round-0 federated head screens the clients'
ridge statistics the same way (server/head_init.py)."""

from __future__ import annotations

from fedgate.aggregation.fedavg import Params
from fedgate.aggregation.robust import best_scored
from fedgate.strategies.base import Arrays, RoundInputs, Strategy


class Validated(Strategy):
    name = "validated"
    paper = "this project: score-based screening"
    summary = ("scores each update alone on the server's validation rows, leaves out the `byzantine-clients` "
               "lowest; screens the round-0 head alike")
    per_layer_weights = False
    sums_updates = False
    scores_updates = True

    def combine(self, deltas: list[Arrays], examples: list[float], per_layer: list[dict] | None,
                inputs: RoundInputs, info: dict) -> Params:
        if inputs.scores is None:
            raise ValueError("aggregate: strategy validated needs the server's validation score of each update")
        mean, info["excluded"] = best_scored(deltas, examples, inputs.scores, self.fed.byzantine_clients)
        info["validation_auc"] = [float(s) for s in inputs.scores]
        return mean
