"""A launcher stopped with SIGTERM (``timeout``, a job scheduler, ``kill``) still stops the
processes it started: inside ``sigterm_unwinds`` the signal unwinds the stack as an exit
would, so the ``finally`` blocks that stop the SuperLink and Ray run."""

import signal
import subprocess
import sys

from fedgate.launch.processes import alive, sigterm_unwinds

SCRIPT = """
import subprocess, time
from fedgate.launch.processes import sigterm_unwinds
with sigterm_unwinds():
    child = subprocess.Popen(["sleep", "300"])
    try:
        print(child.pid, flush=True)  # inside the try: a signal right after it still reaches the finally
        time.sleep(120)
    finally:
        child.kill()
        child.wait()
        print("stopped the child", flush=True)
"""


def test_sigterm_runs_the_finally_blocks_and_exits_with_the_signals_code():
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, text=True)
    try:
        child = int(proc.stdout.readline())
        assert alive(child)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        rest = proc.stdout.read()
    finally:
        proc.kill()
    assert code == 128 + signal.SIGTERM and "stopped the child" in rest
    assert not alive(child)


def test_the_previous_handler_comes_back_after_the_block():
    before = signal.getsignal(signal.SIGTERM)
    with sigterm_unwinds():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before
