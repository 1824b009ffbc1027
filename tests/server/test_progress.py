"""A run without client updates behind it fails instead of reporting the initial model."""

import pytest

from fedgate.config import FedgateConfig
from fedgate.rundir import RunDir
from server.federation import NoProgressError, _check_progress


def _cfg(**flat):
    return FedgateConfig.from_flat({"federation.rounds": 4, **flat})


def _round(run, rnd, aggregated, reason="partition 3 of 4 (0 rows)"):
    run.append_round({"round": rnd, "aggregated": aggregated, "skipped": "0 usable update(s)",
                      "failures": [] if aggregated else [{"node_id": 7, "stage": "train", "reason": reason}],
                      "dropped": [], "rejected": []})


def test_idle_rounds_in_a_row_stop_the_run_with_the_clients_reasons(tmp_path):
    run = RunDir(tmp_path)
    _round(run, 1, True)
    _round(run, 2, False)
    _check_progress(_cfg(), run, 2, idle=1)  # one idle round is tolerated
    _round(run, 3, False)
    _check_progress(_cfg(), run, 3, idle=2)
    with pytest.raises(NoProgressError, match=r"3 round\(s\) in a row.*node 7: partition 3 of 4"):
        _round(run, 4, False)
        _check_progress(_cfg(**{"federation.max-idle-rounds": 3}), run, 4, idle=3)


def test_a_run_where_no_round_aggregated_fails_at_its_end(tmp_path):
    run = RunDir(tmp_path)
    cfg = _cfg(**{"federation.rounds": 2, "federation.max-idle-rounds": 0})
    _round(run, 1, False)
    _check_progress(cfg, run, 1, idle=1)
    _round(run, 2, False)
    with pytest.raises(NoProgressError, match="through round 2"):
        _check_progress(cfg, run, 2, idle=2)


def test_a_run_with_one_aggregated_round_finishes(tmp_path):
    run = RunDir(tmp_path)
    cfg = _cfg(**{"federation.rounds": 2, "federation.max-idle-rounds": 0})
    _round(run, 1, True)
    _round(run, 2, False)
    _check_progress(cfg, run, 2, idle=1)
