"""Server-side evaluation: held-out rows, F1 at a cut chosen on validation, noisy copies."""

import numpy as np

from fedgate.federated.evaluator import ServerEvaluator, noise_key
from fedgate.federated.shards import client_shard, server_splits
from fedgate.metrics import f1_score, misaligned


def test_evaluator_reports_clean_and_noisy_metrics(tiny_cfg):
    cfg = tiny_cfg(**{"server.noise-rates": "0.2"})
    ev = ServerEvaluator(cfg, progress=False)
    assert len(ev.splits["test"]) == 40 and len(ev.splits["validation"]) == 40
    state = ev.initial_state()
    assert set(state) == {n for n, p in ev.model.named_parameters() if p.requires_grad}
    rng = np.random.default_rng(0)
    state = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in state.items()}
    metrics, pred = ev.evaluate(state)
    assert pred.shape == (40, 6)  # five attributes and the alignment logit
    for key in ("auc", "f1", "pearson_helpfulness", "decision_threshold", noise_key(0.2)):
        assert key in metrics
    y = misaligned(ev.test_labels()[:, 0], cfg.data.misaligned_threshold)
    assert metrics["f1"] == f1_score(y, -pred[:, 5] >= metrics["decision_threshold"])
    assert noise_key(0.2) == "auc_noise_0.2"


def test_server_rows_are_not_client_rows(tiny_cfg):
    cfg = tiny_cfg()
    server = server_splits(cfg)
    server_prompts = set(server["test"]["prompt"]) | set(server["validation"]["prompt"])
    for p in range(2):
        shard = client_shard(cfg, p, 2)
        assert not server_prompts & (set(shard["train"]["prompt"]) | set(shard["holdout"]["prompt"]))


def test_validation_auc_scores_on_validation_rows_and_flips_with_the_head(tiny_cfg):
    from fedgate.metrics import roc_auc

    ev = ServerEvaluator(tiny_cfg(), progress=False)
    rng = np.random.default_rng(1)
    state = {k: (v + 0.05 * rng.standard_normal(v.shape)).astype(v.dtype) for k, v in ev.initial_state().items()}
    auc = ev.validation_auc(state)
    _, pred = ev.evaluate(state)
    y_test = misaligned(ev.test_labels()[:, 0], 2)
    assert auc != roc_auc(y_test, -pred[:, 5])  # not the test rows
    flipped = {k: -v if k.startswith("head.") else v for k, v in state.items()}  # every score negated
    assert abs(ev.validation_auc(flipped) - (1.0 - auc)) < 1e-9
