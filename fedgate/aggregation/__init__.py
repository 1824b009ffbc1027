"""Aggregation rules as pure functions over ``{name: ndarray}``.

Sign convention, as in :mod:`fedgate.state`: a client update is ``delta = local - global``.
"""

from fedgate.aggregation.fedavg import apply_update, fedavg, weighted_mean
from fedgate.aggregation.gates import gate_profile, prior_from_profile
from fedgate.aggregation.update import ClientUpdate

__all__ = ["ClientUpdate", "apply_update", "fedavg", "gate_profile", "prior_from_profile", "weighted_mean"]
