"""Gate ablation: which gates earn their keep? Plain LoRA, the token gate alone, the
structural gate alone, both, and both without the KL pull towards the federation's gate
profile, on the default non-IID split; plain LoRA and both gates again with one client in
four training on flipped labels (conflicting feedback).

    python -m simulations.study_gates [--variants ...] [--seeds 0,1,2] [--set KEY=VALUE] [--out DIR]
    python -m simulations.report DIR                                   # tables and plots again, no runs

Writes ``results.csv`` / ``results.md`` (final ROC-AUC and its difference to plain LoRA,
F1, AUC under 20% input noise, trainable share, uplink), ``gates_vs_plain.csv`` / ``.md``
(both gates minus plain LoRA, paired per seed: clean, under 20% input noise, with flipped
clients), ``final_auc.png``, ``auc_per_round.png``, ``variants.json`` and one run
directory per variant and seed.
"""

from __future__ import annotations

import sys
from pathlib import Path

from simulations.results import contrast_cells, paired_difference, rows_from_dir, standard_results, write_table
from simulations.study import study_main

NOISE = "0.2"
FLIPPED = 0.25  # one client of the default four
COMMON = {"shards.partitioner": "dirichlet", "shards.alpha": 0.5,  # rounds and sizing: the defaults
          "server.noise-rates": NOISE, "server.report": False,
          "federation.fraction-evaluate": 0.0, "server.baselines": False}
PLAIN = {"adapter.token-gate": False, "adapter.structural-gate": False}
BOTH = {"adapter.token-gate": True, "adapter.structural-gate": True}
VARIANTS = {
    "plain-lora": PLAIN,
    "token-gate": {"adapter.token-gate": True, "adapter.structural-gate": False},
    "structural-gate": {"adapter.token-gate": False, "adapter.structural-gate": True},
    "both-gates": BOTH,
    "both-no-kl-prior": {**BOTH, "loss.beta": 0.0},
    "plain-lora-flipped": {**PLAIN, "shards.flipped-clients": FLIPPED},
    "both-gates-flipped": {**BOTH, "shards.flipped-clients": FLIPPED},
}
# condition -> (gated variant, plain variant, figure compared)
CONDITIONS = {
    "clean": ("both-gates", "plain-lora", "auc"),
    f"{float(NOISE):.0%} of test inputs noised": ("both-gates", "plain-lora", f"auc_noise_{NOISE}"),
    f"{FLIPPED:.0%} of clients flipped": ("both-gates-flipped", "plain-lora-flipped", "auc"),
}


def gates_vs_plain(out: Path, rows: dict[str, dict]) -> str:
    """Both gates minus plain LoRA in each condition whose two variants ran, paired per seed."""
    table = []
    for condition, (gated, plain, key) in CONDITIONS.items():
        if not ({gated, plain} <= rows.keys() and key in rows[gated] and key in rows[plain]):
            continue
        diff, se, _ = paired_difference(out, rows, gated, plain, key=key)
        shared = set(rows[gated].get("per_seed", {})) & set(rows[plain].get("per_seed", {}))
        table.append({"condition": condition, "seeds": len(shared) or 1,
                      "plain": rows[plain][key], "gated": rows[gated][key],
                      **dict(zip(("diff_points", "se", "resolved"), contrast_cells(diff, se)))})
    if not table:
        return ""
    return "\n" + write_table(out, table, {
        "condition": "condition", "seeds": "seeds", "plain": "plain LoRA ROC-AUC", "gated": "both gates ROC-AUC",
        "diff_points": "gated - plain (points, paired)", "se": "its SE", "resolved": ">= 2 SE"}, name="gates_vs_plain")


def report(out: Path) -> str:
    rows = rows_from_dir(out)
    return standard_results(out, rows, baseline="plain-lora", title="gate ablation") + gates_vs_plain(out, rows)


def main(argv: list[str] | None = None) -> int:
    return study_main(argv, doc=__doc__, module=__spec__.name, variants=VARIANTS, common=COMMON,
                      default_out="runs/study-gates", report=report)


if __name__ == "__main__":
    sys.exit(main())
