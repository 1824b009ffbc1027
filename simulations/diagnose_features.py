"""What the frozen backbone's features can tell, before any adapter trains.

    python -m simulations.diagnose_features [--limit 0] [--set KEY=VALUE ...]

For each pooling view (``mean``: the previous default; ``mean-last``: the current one), the
head inputs of the untrained model (adapters at B = 0) on the embedded train / validation /
test splits, and on them:

- a linear probe (logistic regression on misaligned, C chosen on validation): the best a
  linear head can do on these features;
- the ridge head as fitted before training, once regressing the attributes only (the alignment
  score = predicted helpfulness, the previous head) and once with the alignment target
  (+1 aligned / -1 misaligned, the current head), each with its penalty chosen on validation;
- test ROC-AUC per degradation kind (against the real answers) of the probe.

Prints one table; not a test. It explains two of the fixes in docs/learning.md: a mean is
nearly blind to where a text stops, and regressing helpfulness spends the head on orderings
the alignment decision does not need.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from fedgate import ridge
from fedgate.cheap_baselines import probe_auc
from fedgate.batching import encode_split
from fedgate.config import FedgateConfig
from fedgate.metrics import misaligned, misalignment_score, roc_auc
from fedgate.model import build_reward_model, head_targets
from fedgate.data.splits import load_splits
from fedgate.evaluation import frozen_features
from fedgate.train import prepare_cache
from simulations.study import parse_sets


def view_figures(cfg: FedgateConfig, splits: dict) -> dict[str, float]:
    device = torch.device("cpu")
    torch.manual_seed(cfg.train.seed)
    model, tok = build_reward_model(cfg.model, cfg.adapter)
    enc = {k: encode_split(v, tok, cfg.model) for k, v in splits.items()}
    prepare_cache(model, list(enc.values()), cfg, tok.pad_token_id, device, progress=False)
    x = {k: frozen_features(model, s, cfg, tok.pad_token_id, device) for k, s in enc.items()}
    labels = {k: s.labels.numpy() for k, s in enc.items()}
    thr = cfg.data.misaligned_threshold
    y = {k: misaligned(v[:, 0], thr) for k, v in labels.items()}
    out: dict[str, float] = {"features": float(x["train"].shape[1])}
    out["probe"], _ = probe_auc(x["train"], y["train"], x["validation"], y["validation"], x["test"], y["test"],
                                cfg.train.seed)
    targets = head_targets(torch.as_tensor(labels["train"]), thr).numpy()
    for name, cols in (("ridge_helpfulness", slice(0, 5)), ("ridge_alignment", slice(0, 6))):
        stats = ridge.ridge_stats(x["train"], targets[:, cols])
        w, lam, _ = ridge.fit(stats, x["validation"], labels["validation"], thr)
        xt = ridge.with_bias(x["test"])
        out[name] = roc_auc(y["test"], misalignment_score(xt @ w))
        out[f"{name}_lambda"] = lam
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--limit", type=int, default=0, help="training rows (0 = all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    base = FedgateConfig.from_flat({"data.limit": args.limit, **parse_sets(args.set)})
    splits = load_splits(base)
    print(f"rows: { {k: len(v) for k, v in splits.items()} }")
    print("| pooling | head inputs | linear probe | ridge, helpfulness as score | ridge, alignment target | s |")
    print("|---|---|---|---|---|---|")
    for pooling in ("mean", "mean-last"):
        cfg = dataclasses.replace(base, model=dataclasses.replace(base.model, pooling=pooling))
        t0 = time.perf_counter()
        r = view_figures(cfg, splits)
        print(f"| {pooling} | {r['features']:.0f} | {r['probe']:.4f} | {r['ridge_helpfulness']:.4f} "
              f"(lambda {r['ridge_helpfulness_lambda']:g}) | {r['ridge_alignment']:.4f} "
              f"(lambda {r['ridge_alignment_lambda']:g}) | {time.perf_counter() - t0:.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
