"""Preference pairs end to end on a tiny model: encoding as alternating rows, the linear
Bradley-Terry head, the cheap pair baselines, and `fedgate train` on a pair file."""

import csv
import json

import numpy as np
import pytest

from fedgate.batching import encode_pairs, is_pairs
from fedgate.config import ModelConfig
from fedgate.data.pairs import pairs_to_dataset
from fedgate.model import ALIGNMENT, NUM_OUTPUTS
from fedgate.pairwise import differences, fit_bradley_terry, head_weights_from, length_rule, pair_baselines


def _pairs(n, seed=0):
    """Pairs where the chosen reply is polite and shorter: learnable from words and length."""
    rng = np.random.default_rng(seed)
    topics = ["lists", "files", "dates", "loops", "sets", "maps", "strings", "numbers"]
    rows = []
    for i in range(n):
        t = topics[i % len(topics)]
        rows.append({"prompt": f"Human: question {i} about {t}?",
                     "chosen": f"Happy to help: sort the {t} with a key." + " ok" * int(rng.integers(0, 3)),
                     "rejected": f"No. Figure out the {t} yourself, it is not hard at all, really not." * 2,
                     "margin": 0, "source": "test"})
    return pairs_to_dataset(rows)


def test_pairs_encode_as_alternating_rows_and_cut_long_prompts_from_the_left(tiny_tokenizer):
    ds = pairs_to_dataset([{"prompt": "Human: first turn. " * 30 + "Human: the last question?", "chosen": "yes",
                            "rejected": "no", "margin": 2, "source": "t"}])
    split = encode_pairs(ds, tiny_tokenizer, ModelConfig(backbone="tiny-bert", max_prompt_tokens=12))
    assert is_pairs(split) and len(split) == 2 and split.kinds == ["chosen", "rejected"]
    assert split.fields["prompt_"].tolist() == [0, 0] and split.meta["margin"].tolist() == [2.0]
    prompt = tiny_tokenizer.decode(split.texts[0], skip_special_tokens=True)
    assert prompt.endswith("the last question?") and len(split.texts[0]) == 12
    assert tiny_tokenizer.decode(split.texts[split.fields["response_"][1]], skip_special_tokens=True) == "no"


def test_bradley_terry_head_recovers_a_linear_preference():
    rng = np.random.default_rng(0)
    w_true = rng.normal(size=8)
    x = rng.normal(size=(800, 8))
    d = x[0::2] - x[1::2]
    flip = (d @ w_true + rng.logistic(size=len(d))) < 0  # the lower-scoring reply was sometimes chosen
    rows = x.copy()
    rows[0::2][flip], rows[1::2][flip] = x[1::2][flip], x[0::2][flip]
    w, c, val_acc = fit_bradley_terry(differences(rows[:600]), differences(rows[600:]))
    cosine = w @ w_true / np.linalg.norm(w) / np.linalg.norm(w_true)
    assert cosine > 0.9 and val_acc > 0.7
    head = head_weights_from(w)
    assert head.shape == (9, NUM_OUTPUTS) and np.allclose(head[:-1, ALIGNMENT], w) and not head[:, :ALIGNMENT].any()


def test_pair_baselines_find_the_length_direction_and_the_words():
    train, validation, test = _pairs(120), _pairs(40, 1), _pairs(40, 2)
    assert length_rule(train["chosen"], train["rejected"]) == -1  # the shorter reply wins here
    b = pair_baselines(train, validation, test)
    assert b["length"] == 1.0 and b["length_longer_wins"] == 0.0
    assert b["tfidf_logreg"] == 1.0  # "happy to help" against "figure it out yourself"


def test_fedgate_train_on_a_pair_file_reports_pairwise_accuracy(tmp_path, capsys):
    from fedgate.cli import main

    rows = []
    for r in _pairs(60).to_list():
        rows.append({"chosen": f"\n\nHuman: {r['prompt'][7:]}\n\nAssistant: {r['chosen']}",
                     "rejected": f"\n\nHuman: {r['prompt'][7:]}\n\nAssistant: {r['rejected']}"})
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert main(["train", "--backbone", "tiny-bert", "--data", str(data), "--out", str(out), "--max-steps", "4",
                 "--set", "train.batch-size=4", "--set", "train.threads=1", "--quiet"]) == 0
    assert "test pairwise accuracy" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    test = metrics["test"]
    assert test["pairwise_accuracy_low"] <= test["pairwise_accuracy"] <= test["pairwise_accuracy_high"]
    assert test["n_pairs"] == metrics["data"]["test"] and "auc" not in test
    assert set(metrics["baselines"]) == {"length", "length_longer_wins", "tfidf_logreg", "frozen_probe"}
    assert metrics["train"]["steps"] == 4 and "best_val_pairwise_accuracy" in metrics["train"]
    with (out / "test_predictions.csv").open() as f:
        preds = list(csv.DictReader(f))
    assert len(preds) == test["n_pairs"]
    wins = np.mean([(float(p["chosen_score"]) > float(p["rejected_score"]))
                    + 0.5 * (float(p["chosen_score"]) == float(p["rejected_score"])) for p in preds])
    assert wins == pytest.approx(test["pairwise_accuracy"], abs=1e-3)  # the CSV's 4 decimals
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["evaluate", str(out), "--data", str(data), "--quiet"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["n_pairs"] == 60 and 0.0 <= scored["pairwise_accuracy"] <= 1.0  # every pair of the file
    assert main(["evaluate", str(out), "--data", str(data), "--quiet", "--noise-rate", "0.5"]) == 0
    noisy = json.loads(capsys.readouterr().out)  # prompt and both replies perturbed, every pair scored
    assert noisy["noise_rate"] == 0.5 and noisy["n_pairs"] == 60 and 0.0 <= noisy["pairwise_accuracy"] <= 1.0
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # evaluate writes nothing


def _hh_file(path, n):
    """``n`` pairs as HH-RLHF transcripts, one JSON line each."""
    rows = [{"chosen": f"\n\nHuman: {r['prompt'][7:]}\n\nAssistant: {r['chosen']}",
             "rejected": f"\n\nHuman: {r['prompt'][7:]}\n\nAssistant: {r['rejected']}"} for r in _pairs(n).to_list()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.integration
def test_a_federation_trains_on_a_pair_file_and_reports_pairwise_accuracy(tmp_path):
    """Real Flower simulation on pairs: the federated Bradley-Terry head before round 1,
    pairwise accuracy (clean and noisy) on the server's held-out pairs, the clients' own
    pairwise accuracy, the pair baselines, and a flipped client's pairs really swapped."""
    from fedgate.rundir import RunDir
    from fedgate.launch.simulation import simulate

    data = _hh_file(tmp_path / "pairs.jsonl", 160)
    code, run_dir = simulate([f'model.backbone="tiny-bert" data.source="{data}" federation.rounds=2 '
                              'train.batch-size=4 train.threads=1 server.eval-limit=0 server.noise-rates="0.2" '
                              'shards.partitioner="iid" shards.flipped-clients=0.5'],
                             num_supernodes=2, out=tmp_path / "run", timeout=420)
    assert code == 0, f"the simulation failed; see {run_dir}"
    rounds = RunDir(run_dir).rounds()
    head = rounds[0]["head_init"]
    assert head["fitted"] and head["clients"] == 2 and 0.0 <= head["validation_pairwise_accuracy"] <= 1.0
    assert set(rounds[0]["baselines"]) == {"length", "length_longer_wins", "tfidf_logreg", "frozen_probe"}
    for r in rounds:
        s = r["server_eval"]
        assert "auc" not in s and s["n_pairs"] == 16  # 10% of the 160 pairs' prompts, held out
        assert s["pairwise_accuracy_low"] <= s["pairwise_accuracy"] <= s["pairwise_accuracy_high"]
    assert "pairwise_accuracy_noise_0.2" in rounds[-1]["server_eval"]
    last = rounds[-1]
    assert sorted(c["flipped-rows"] > 0 for c in last["clients"]) == [False, True]  # one of two clients flipped
    assert all("local-pairwise-accuracy" in c and "local-auc" not in c for c in last["clients"])
    assert 0.0 <= last["federated_eval"]["pairwise_accuracy-mean"] <= 1.0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["final"]["pairwise_accuracy"] == last["server_eval"]["pairwise_accuracy"]
    assert "test pairwise accuracy" in (run_dir / "report.md").read_text()


def test_pairs_take_iid_dirichlet_and_quantity_partitions_but_not_kinds():
    from fedgate.data.partition import PAIR_SKEW, partition_pairs
    from fedgate.data.schema import DataError

    ds = _pairs(80)
    rows = [{**r, "chosen": r["rejected"], "rejected": r["chosen"]} if i % 2 else r
            for i, r in enumerate(ds.to_list())]  # half the pairs: the longer reply wins
    ds = pairs_to_dataset(rows)
    parts = partition_pairs(ds, 4, "dirichlet", alpha=0.1, seed=0)
    assert sum(len(p) for p in parts) == 80 and all(PAIR_SKEW not in p.column_names for p in parts)
    assert sorted(x for p in parts for x in p["prompt"]) == sorted(ds["prompt"])
    shares = [np.mean([len(c) > len(r) for c, r in zip(p["chosen"], p["rejected"])]) for p in parts]
    assert max(shares) - min(shares) > 0.5  # alpha 0.1: clients see length pointing different ways
    with pytest.raises(DataError, match="needs rated rows"):
        partition_pairs(ds, 2, "kind")


def test_flipping_pairs_swaps_exactly_the_marked_ones():
    from fedgate.data.pairs import flip_pairs

    ds = _pairs(20)
    flipped = flip_pairs(ds, 0.25, seed=3)
    assert flipped.column_names == [*ds.column_names, "flipped"] and sum(flipped["flipped"]) == 5
    for before, after in zip(ds.to_list(), flipped.to_list()):
        swapped = (after["chosen"], after["rejected"]) == (before["rejected"], before["chosen"])
        assert swapped if after["flipped"] else (after["chosen"], after["rejected"]) == (before["chosen"], before["rejected"])


def test_rated_rows_hide_pairs_within_each_prompt(tiny_tokenizer):
    import torch

    from fedgate.batching import encode_texts
    from fedgate.evaluation import rated_pairs, rated_pairwise_accuracy

    prompts = ["q1", "q1", "q1", "q2", "q2", "q3"]
    helpfulness = [4, 1, 4, 2, 3, 0]
    labels = torch.tensor([[h, 0, 0, 0, 0] for h in helpfulness], dtype=torch.float32)
    split = encode_texts(prompts, [f"r{i}" for i in range(6)], labels, [""] * 6, tiny_tokenizer,
                         ModelConfig(backbone="tiny-bert"))
    better, worse = rated_pairs(split)
    assert sorted(zip(better.tolist(), worse.tolist())) == [(0, 1), (2, 1), (4, 3)]  # ties and lone rows give none
    pred = np.zeros((6, NUM_OUTPUTS))
    pred[:, ALIGNMENT] = [1.0, 0.0, -1.0, 0.5, 0.7, 0.0]  # wins (0,1) and (4,3), loses (2,1)
    assert rated_pairwise_accuracy(pred, split) == {"pairwise_accuracy": pytest.approx(2 / 3), "n_pairs": 3}
    assert rated_pairs(split.subset(np.array([0, 1, 5])))[0].tolist() == [0]
