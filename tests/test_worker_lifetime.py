"""Batch worker processes die with their parent, even when it is killed (SIGKILL): no
orphaned worker goes on with files nobody waits for, holding memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie that nobody reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc (Linux): macOS and Windows "
                    "close the pipe the same way, untested here")
def test_workers_exit_when_the_parent_is_killed(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent("""
        import sys, time
        from napari_edgesam.workflows.worker_process import WorkerPool

        pool = WorkerPool(2)
        futures = [pool.submit(time.sleep, 120) for _ in range(2)]
        t0 = time.time()
        while len(pool.pids) < 2 and time.time() - t0 < 60:
            time.sleep(0.05)
        print(*sorted(pool.pids), flush=True)
        time.sleep(120)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        deadline = time.time() + 10
        while any(_alive(p) for p in pids) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(p) for p in pids), "workers outlived their killed parent"
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in pids if "pids" in locals() else []:
            if _alive(p):
                os.kill(p, signal.SIGKILL)
