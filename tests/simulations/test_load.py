"""Many simulated clients, a few sampled per round (the load benchmark at tiny scale): every
round trains the sampled share, memory does not grow with the rounds, and nothing of the
run listens beyond 127.0.0.1."""

import threading

from simulations.bench_load import run_load
from simulations.processes import is_loopback, listening_addresses, processes_with_flwr_home

TINY = {"model.backbone": "tiny-bert", "data.limit": 400, "server.eval-limit": 30, "train.batch-size": 8,
        "train.threads": 1, "federation.rounds": 4}


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
