"""SCAFFOLD (Karimireddy et al., 2020): control variates correct each client's drift.

The server keeps ``c`` over the shared tensors and sends it with every train message
(record ``scaffold-c``); each client keeps its own ``c_i`` between rounds (``scaffold-ci``),
corrects every local step by ``c - c_i`` and replies ``c_i+ - c_i`` (``scaffold-dc``); the
server moves ``c`` by ``|S| / N`` times their mean. The correction is applied in the update
space of the client's optimizer (:class:`ControlVariate`)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from fedgate.aggregation.fedavg import Params, weighted_mean
from fedgate.strategies.base import Arrays, LocalRule, Strategy, trainable

SERVER_CONTROL = "scaffold-c"  # train message: the server's c over the tensors sent
CONTROL_DELTA = "scaffold-dc"  # train reply: c_i+ - c_i
CLIENT_CONTROL = "scaffold-ci"  # the client's own c_i, kept between rounds


class ControlVariate:
    """SCAFFOLD's correction, applied in the local optimizer's update space.

    After every optimizer step, each shared tensor moves by ``-lr_t (c - c_i)`` (``lr_t``:
    its parameter group's learning rate at that step), and at the end of the round the new
    control variate is the paper's option II: ``c_i+ = c_i - c + (x - y) / sum_t lr_t``, the
    mean step direction per unit of learning rate. With SGD this is the paper's update
    ``y <- y - lr (g + c - c_i)``. With AdamW the directions are Adam's normalised steps, so
    the correction is measured in the units it is applied in; adding a raw gradient
    difference to Adam's input instead lets the optimizer rescale it to full-size steps
    wherever the local gradients are small, which is what made SCAFFOLD diverge here."""

    def __init__(self, model: torch.nn.Module, c_global: Mapping[str, torch.Tensor],
                 c_local: Mapping[str, torch.Tensor]) -> None:
        self.c_global, self.c_local = c_global, c_local
        self.params = {n: p for n, p in trainable(model).items() if n in c_global}
        self.corrections = {n: (c_global[n] - c_local.get(n, torch.zeros_like(c_global[n]))).to(p.device, p.dtype)
                            for n, p in self.params.items()}
        self.lr_sum = dict.fromkeys(self.params, 0.0)
        self._group_of: dict[str, dict] | None = None

    @torch.no_grad()
    def after_step(self, optimizer) -> None:
        """Move each shared tensor by ``-lr (c - c_i)``; ``optimizer`` has ``param_groups``."""
        if self._group_of is None:
            by_id = {id(p): g for g in optimizer.param_groups for p in g["params"]}
            missing = [n for n, p in self.params.items() if id(p) not in by_id]
            if missing:
                raise ValueError(f"SCAFFOLD: the optimizer does not update {missing[:3]}")
            self._group_of = {n: by_id[id(p)] for n, p in self.params.items()}
        for n, p in self.params.items():
            lr = float(self._group_of[n]["lr"])
            p.sub_(lr * self.corrections[n])
            self.lr_sum[n] += lr

    @torch.no_grad()
    def new_control(self, start: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``c_i+`` from the round's start ``x`` (the global state) and the weights now, ``y``."""
        out = {}
        for n, p in self.params.items():
            c_i = self.c_local.get(n, torch.zeros_like(self.c_global[n])).double()
            moved = (start[n].double() - p.detach().double().cpu()) / self.lr_sum[n] if self.lr_sum[n] > 0 else 0.0
            out[n] = (c_i - self.c_global[n].double() + moved).to(self.c_global[n].dtype)
        return out


def server_control(c: Mapping[str, np.ndarray], control_deltas: Sequence[Mapping[str, np.ndarray]],
                   num_clients: int) -> Params:
    """The server's new control variate: ``c + (|S| / N) mean_k(c_k+ - c_k)``, S the clients
    of this round, N all clients."""
    if not control_deltas:
        return dict(c)
    mean = weighted_mean(control_deltas, [1.0] * len(control_deltas))
    share = len(control_deltas) / max(num_clients, len(control_deltas))
    return {k: (np.asarray(v, np.float64) + share * mean[k]).astype(np.asarray(v).dtype) if k in mean else v
            for k, v in c.items()}


def _tensors(arrays: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v, order="C")) for k, v in arrays.items()}


class Scaffold(Strategy):
    name = "scaffold"
    paper = "Karimireddy et al., ICML 2020"
    travels_up = "every trainable tensor and its control-variate delta (twice FedAvg's)"
    travels_down = "every trainable tensor and the server control variate (twice FedAvg's)"
    summary = ("control variates (option II, in AdamW's step units), kept in Flower's `context.state`; "
               "torch engine only")
    downlink_records = (SERVER_CONTROL,)
    uplink_records = (CONTROL_DELTA,)
    client_records = (CLIENT_CONTROL,)
    refuses_ranks = "its control variates have the global adapter shapes"

    def __init__(self, fed) -> None:
        super().__init__(fed)
        self.control: dict[str, np.ndarray] = {}  # c over the shared tensors

    @classmethod
    def check(cls, cfg) -> None:
        fed = cfg.federation
        if cfg.engine.name != "torch":
            raise ValueError("federation.strategy=scaffold moves the weights after each optimizer step, and "
                             "DeepSpeed owns (and may partition) the weights it steps: use engine.name=torch")
        if fed.dp != "off":
            raise ValueError(f"federation.dp={fed.dp} covers the adapter updates; scaffold also uploads each "
                             f"client's control variate, which would be released without noise")
        super().check(cfg)

    # server
    def downlink(self, sent: Mapping[str, np.ndarray]) -> dict[str, Arrays]:
        for k, v in sent.items():
            if k not in self.control:
                self.control[k] = np.zeros_like(v)
        return {SERVER_CONTROL: {k: self.control[k] for k in sent}}

    def after_round(self, uplinks: Sequence[Mapping[str, Arrays]], num_nodes: int) -> None:
        self.control = server_control(self.control, [u[CONTROL_DELTA] for u in uplinks], num_nodes)

    def saved(self) -> Arrays:
        return {f"control/{k}": v for k, v in self.control.items()}

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        self.control = {k[len("control/"):]: v for k, v in arrays.items() if k.startswith("control/")}

    # client
    def local_round(self, model: torch.nn.Module, start: Mapping[str, torch.Tensor], cfg,
                    received: Mapping[str, Arrays], kept: Mapping[str, Arrays]) -> LocalRule:
        if SERVER_CONTROL not in received:
            raise KeyError(f"SCAFFOLD: the train message has no {SERVER_CONTROL!r} record")
        c_local = dict(kept.get(CLIENT_CONTROL) or {})  # empty on this client's first round
        # the c_i this client kept from its last round (0 on its first): shows the client state survives
        norm = float(np.sqrt(sum(float((np.asarray(v, np.float64) ** 2).sum()) for v in c_local.values())))
        variate = ControlVariate(model, _tensors(received[SERVER_CONTROL]), _tensors(c_local))

        def finish(start: Mapping[str, torch.Tensor]) -> tuple[dict, dict, dict]:
            c_new = {k: v.numpy() for k, v in variate.new_control(start).items()}
            c_delta = {k: v - c_local[k] if k in c_local else v for k, v in c_new.items()}
            return {CONTROL_DELTA: c_delta}, {CLIENT_CONTROL: c_new}, {"scaffold-ci-norm": norm}
        return LocalRule(hooks={"after_step": variate.after_step}, finish=finish)
