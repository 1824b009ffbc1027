"""Server optimizers over the mean delta, the "pseudo-gradient": FedAvgM (Hsu et al., 2019)
and FedAdagrad / FedAdam / FedYogi (Reddi et al., 2021, Algorithm 2). The optimizers
themselves are fedgate/aggregation/server_opt.py; ``federation.server-lr``,
``server-momentum``, ``server-beta1``/``-beta2`` and ``server-tau`` set them."""

from __future__ import annotations

from fedgate.strategies.base import Strategy


class FedAvgM(Strategy):
    name = "fedavgm"
    paper = "Hsu et al., 2019"
    summary = "server momentum (`federation.server-momentum`, 0.9)"
    server_optimizer = "avgm"


class FedAdagrad(Strategy):
    name = "fedadagrad"
    paper = "Reddi et al., ICLR 2021"
    summary = "adaptive server optimizer, Adagrad (Reddi et al. 2021; server-lr 0.01, `federation.server-tau`)"
    server_optimizer = "adagrad"
    default_server_lr = 0.01


class FedAdam(Strategy):
    name = "fedadam"
    paper = "Reddi et al., ICLR 2021"
    summary = ("adaptive server optimizer, Adam (Reddi et al. 2021; server-lr 0.01, `federation.server-beta1`, "
               "`server-beta2`, `server-tau`)")
    server_optimizer = "adam"
    default_server_lr = 0.01


class FedYogi(Strategy):
    name = "fedyogi"
    paper = "Reddi et al., ICLR 2021"
    summary = ("adaptive server optimizer, Yogi (Reddi et al. 2021; server-lr 0.01, `federation.server-beta1`, "
               "`server-beta2`, `server-tau`)")
    server_optimizer = "yogi"
    default_server_lr = 0.01
