"""Robust rules that look at the updates one by one: the coordinate-wise median and
trimmed mean (Yin et al., 2018) and Multi-Krum (Blanchard et al., 2017). None is a weighted
sum, so none takes per-layer weights or central DP's noised sum."""

from __future__ import annotations

from fedgate.aggregation.fedavg import Params
from fedgate.aggregation.robust import coordinate_median, multi_krum, trimmed_mean
from fedgate.strategies.base import Arrays, RoundInputs, Strategy


class Median(Strategy):
    name = "median"
    paper = "Yin et al., ICML 2018"
    summary = "coordinate-wise median, unweighted"
    per_layer_weights = False
    sums_updates = False

    def combine(self, deltas: list[Arrays], examples: list[float], per_layer: list[dict] | None,
                inputs: RoundInputs, info: dict) -> Params:
        return coordinate_median(deltas)


class TrimmedMean(Median):
    name = "trimmed-mean"
    paper = "Yin et al., ICML 2018"
    summary = "coordinate-wise trimmed mean (`federation.trim-fraction` 0.2 per end), unweighted"

    def combine(self, deltas: list[Arrays], examples: list[float], per_layer: list[dict] | None,
                inputs: RoundInputs, info: dict) -> Params:
        return trimmed_mean(deltas, self.fed.trim_fraction)


class Krum(Median):
    name = "krum"
    paper = "Blanchard et al., NeurIPS 2017"
    summary = ("Multi-Krum: leaves out the `federation.byzantine-clients` (f, 1) updates farthest from the "
               "others; the median below f + 3 updates")

    def combine(self, deltas: list[Arrays], examples: list[float], per_layer: list[dict] | None,
                inputs: RoundInputs, info: dict) -> Params:
        f = self.fed.byzantine_clients
        if len(deltas) >= f + 3:
            mean, info["excluded"] = multi_krum(deltas, examples, f)
            return mean
        info["krum_fallback"] = "median"  # too few updates this round for Krum's vote
        return coordinate_median(deltas)
