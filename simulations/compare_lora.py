"""The federated LoRA rules side by side, in the settings where their papers report their gaps
(``--setting het-ranks | fedsa | sampled``, default het-ranks).

    python -m simulations.compare_lora --setting het-ranks [--seeds 0,1,2] [--variants ...] [--out DIR]
    python -m simulations.report DIR                       # tables and plots again, no runs

Settings (``--setting``):

- ``het-ranks``: three clients training LoRA ranks 4, 8 and 16 (HetLoRA's / HLoRA's layout),
  global rank 16, Dirichlet 0.5. ``fedavg-ab`` zero-pads the smaller ranks. One more row,
  ``hetlora-pruning``: ``hetlora`` with the clients' rank self-pruning (decay 0.9).
- ``fedsa``: three clients, Dirichlet 0.5, every rank 8 (FedSA-LoRA's setting; at the
  federation's sizing the clients take 12, 21 and 37 local steps a round at seed 0, at
  least the paper's 10).
- ``sampled``: 20 clients, a quarter of them sampled each round (for training, and for the
  clients' evaluation of the global model), 8 rounds.

``fedsa`` keeps each client's B on the client: the server's model holds A alone, so its row
is read in the clients' own AUC column (each client's model on its held-out rows after the
last round), which every rule reports. Every rule runs with uniform client weights and the
same clip, so rows differ by the rule alone. Columns besides the standard ones: pairwise
accuracy (the final model on the test split's pairs of replies to one prompt), downlink MiB
(all rounds), the server's aggregation time (ms, the median round), and the truncation
error where a rule has one (``exact``: the re-factorization's relative error; any rule: what
a lower-rank client's starting point loses of the global update), both the mean over rounds
of the worst module or client.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fedgate import strategies
from fedgate.rundir import RunDir
from simulations.results import standard_results, summarize_run, rows_from_dir
from simulations.study import study_main

RULES = ("fedavg-ab", "exact", "ffa", "hetlora", "fedsa", "rolora", "fedex-lora", "flora", "lora-fair")
COMMON = {"federation.weighting": "uniform", "shards.partitioner": "dirichlet", "shards.alpha": 0.5,
          "server.report": False, "server.baselines": False, "server.noise-rates": ""}
SETTINGS: dict[str, tuple[int, dict, tuple[str, ...]]] = {  # clients, keys, rules that admit the setting
    "het-ranks": (3, {"adapter.r": 16, "federation.heterogeneous-ranks": True, "federation.client-ranks": "4,8,16"},
                  ("fedavg-ab", "exact", "hetlora", "fedex-lora", "flora", "lora-fair")),
    "fedsa": (3, {}, RULES),
    "sampled": (20, {"federation.fraction-train": 0.25, "federation.fraction-evaluate": 0.25,
                     "federation.rounds": 8}, RULES),
}


def _mean_worst(values: list) -> float:
    """Mean over rounds of each round's largest value (NaN when no round has one)."""
    worst = [max(v.values()) if isinstance(v, dict) else max(v) for v in values if v]
    return float(np.mean(worst)) if worst else float("nan")


def summarize(run_dir: Path) -> dict:
    """The study row plus downlink, aggregation time and truncation errors."""
    row = summarize_run(run_dir)
    rounds = RunDir(run_dir).rounds()
    trained = [r for r in rounds if r["round"] > 0]
    # the share of the test split's same-prompt pairs ranked the right way round, final round
    row["pairwise_accuracy"] = float((rounds[-1].get("server_eval") or {}).get("pairwise_accuracy", float("nan")))
    rules = [r.get("strategy", {}) for r in trained]
    row["downlink_mib"] = sum(r["bytes"]["array_down"] for r in trained) / 2**20
    # the median round: a round that shared the machine with other work is slow in every stage
    timed = [s["aggregate_ms"] for s in rules if "aggregate_ms" in s]
    row["aggregate_ms"] = float(np.median(timed)) if timed else float("nan")
    row["truncation_error"] = _mean_worst([s.get("truncation_error") for s in rules])
    row["start_truncation_error"] = _mean_worst([s.get("start_truncation_error") for s in rules])
    # each client's own model after its last local round, on its held-out rows (personalized rules)
    # (None where a client's held-out rows are all of one class: no AUC there)
    local = [c["local-auc"] for c in trained[-1]["clients"] if c.get("local-auc") is not None] if trained else []
    row["client_local_auc"] = float(np.mean(local)) if local else float("nan")
    return row


def report(out: Path) -> str:
    return standard_results(out, rows_from_dir(out, summarize), baseline="fedavg-ab", title="federated LoRA rules",
                            extra={"pairwise_accuracy": "pairwise accuracy", "downlink_mib": "downlink MiB",
                                   "aggregate_ms": "aggregation ms (median round)",
                                   "truncation_error": "re-factorization error",
                                   "start_truncation_error": "low-rank start error",
                                   "client_local_auc": "clients' own AUC (held-out rows)"})


# rows beside one per rule: a rule with one of its options, named "rule-option"
OPTIONS: dict[str, dict[str, dict]] = {
    "het-ranks": {"hetlora-pruning": {"federation.strategy": "hetlora", "train.rank-prune-decay": 0.9}},
}


def variants(setting: str) -> dict[str, dict]:
    _, keys, rules = SETTINGS[setting]
    rows = {rule: {"federation.strategy": rule} for rule in rules} | OPTIONS.get(setting, {})
    return {name: {**keys, **row, "adapter.dense-residual": strategies.get(row["federation.strategy"]).dense_residual}
            for name, row in rows.items()}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setting = "het-ranks"
    if "--setting" in argv:
        i = argv.index("--setting")
        if i + 1 >= len(argv) or argv[i + 1] not in SETTINGS:
            print(f"--setting must be one of {', '.join(SETTINGS)}", file=sys.stderr)
            return 2
        setting = argv[i + 1]
        del argv[i:i + 2]
    clients = SETTINGS[setting][0]
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=variants(setting), common=COMMON,
                      default_out=f"runs/compare-lora-{setting}", report=report, num_supernodes=clients)


if __name__ == "__main__":
    sys.exit(main())
