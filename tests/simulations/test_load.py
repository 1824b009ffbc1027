"""Many simulated clients, a few sampled per round (the load benchmark at tiny scale): every
round trains the sampled share, memory does not grow with the rounds, and nothing of the
run listens beyond 127.0.0.1."""

import threading

import pytest

from simulations.bench_load import run_load
from fedgate.launch.processes import is_loopback, listening_addresses, processes_with_flwr_home

TINY = {"model.backbone": "tiny-bert", "server.baselines": False, "data.limit": 400, "server.eval-limit": 30, "train.batch-size": 8,
        "train.threads": 1, "federation.rounds": 4}


@pytest.mark.integration
def test_twenty_clients_ten_percent_sampled_with_flat_memory(tmp_path):
    out = tmp_path / "load"
    seen: set = set()
    done = threading.Event()

    def watch() -> None:  # every socket the run's processes listen on, while it runs
        while not done.wait(1.0):
            seen.update((host, port) for host, port, _ in
                        listening_addresses(processes_with_flwr_home((out / "flwr-home").resolve())))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        code, rows = run_load(20, 0.1, TINY, out, timeout=900)
    finally:
        done.set()
        watcher.join()
    assert code == 0
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    assert all(r["clients"] == 2 for r in rows)
    assert len({r["partitions"] for r in rows}) > 1  # a different sample each round
    peaks = [r["peak_total_rss_mib"] for r in rows]
    assert all(p > 100 for p in peaks), peaks  # the sampler saw the run's processes
    assert peaks[-1] <= 1.10 * peaks[1], peaks  # after the first round, flat within 10%
    servers = [r["server_rss_mib"] for r in rows]
    assert servers[-1] <= servers[1] + 30, servers
    assert seen and all(is_loopback(host) for host, _ in seen), seen  # the SuperLink, Ray's servers
    assert processes_with_flwr_home((out / "flwr-home").resolve()) == []


def test_a_client_sweep_samples_the_same_number_per_round_and_tabulates_peaks(tmp_path, monkeypatch):
    from simulations import bench_load

    calls = []

    def fake_run_load(clients, fraction, overrides, out, timeout):
        calls.append((clients, fraction))
        return 0, [{"round": r, "wall_s": 10.0, "clients": round(clients * fraction), "partitions": "",
                    "server_rss_mib": 900.0, "peak_total_rss_mib": 4000.0 + 10 * r + clients, "processes": 9}
                   for r in (1, 2, 3)]

    monkeypatch.setattr(bench_load, "run_load", fake_run_load)
    assert bench_load.main(["--clients", "10,50", "--sampled", "5", "--out", str(tmp_path)]) == 0
    assert calls == [(10, 0.5), (50, 0.1)]
    table = (tmp_path / "load_by_clients.md").read_text()
    assert "| 50 | 5 | 4080.0 | 4080.0 | 900.0 | 10.0 |" in table
    assert (tmp_path / "10-clients" / "load.md").is_file()


def test_a_round_shorter_than_the_sampling_interval_takes_the_sample_nearest_its_end(tmp_path):
    from fedgate.rundir import RunDir
    from simulations.bench_load import per_round

    run = RunDir(tmp_path)
    run.path.mkdir(parents=True, exist_ok=True)
    for rnd, end in ((0, 100.0), (1, 110.0), (2, 110.3)):
        run.append_round({"round": rnd, "finished_at": end, "wall_s": {"round": 1.0}, "clients": [],
                          "server_rss_mib": 900.0 + rnd})
    samples = [(105.0, 3000.0, 5), (109.0, 3100.0, 5), (110.6, 3050.0, 5), (115.0, 2000.0, 5)]
    rows = per_round(tmp_path, samples)
    assert [r["peak_total_rss_mib"] for r in rows] == [3100.0, 3050.0]  # round 2 had no sample inside
    assert [r["server_rss_mib"] for r in rows] == [901.0, 902.0]
