"""img2dataset's download in a child process whose worker processes die with the driver.

img2dataset's multiprocessing distributor spawns a pool of workers that outlive a driver killed
with SIGKILL (an OOM kill, a pre-empted node, `kill -9`): each goes on with its shard for many
seconds, writing into the output folder that a rerun is already writing too. A killed process
cannot stop its children, so the download runs in a child that leads its own process group (the
pool workers join it) and watches its parent: when the driver is gone it kills the whole group.
Ctrl-C reaches the driver only (the group is not the terminal's), which ends the group itself.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

WATCH_INTERVAL_S = 0.2
STOP_GRACE_S = 5.0


def run_in_group(target: Callable[..., None], *args) -> None:
    """`target(*args)` in a spawned child and its own process group; a failure there is raised
    here as one line (OSError with its errno kept: a full disk stays a full disk)."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_child, args=(target, args, os.getpid(), send), name="img2dataset", daemon=False
    )
    child.start()
    send.close()
    try:
        child.join()
    except BaseException:  # Ctrl-C, or the driver's own failure: the workers stop with it
        stop_group(child)
        raise
    try:
        failure = receive.recv()  # what the child sent, if it failed
    except EOFError:  # it closed the pipe without a word: it did its work
        failure = None
    receive.close()
    if failure is not None:
        kind, number, message = failure
        if kind == "OSError":
            raise OSError(number, message)
        raise RuntimeError(f"img2dataset: {message}")
    if child.exitcode:
        raise RuntimeError(f"img2dataset: its process ended with exit code {child.exitcode}")


def stop_group(child: multiprocessing.Process) -> None:
    """SIGTERM to the child's group, then SIGKILL to what is left after STOP_GRACE_S."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 1.0)):
        try:
            os.killpg(child.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        child.join(wait)
        if not _group_alive(child.pid):
            return


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _child(target, args, driver_pid: int, send) -> None:
    os.setpgid(0, 0)  # a group of our own, which the pool workers spawned from here join
    watcher = threading.Thread(target=_watch, args=(driver_pid,), daemon=True)
    watcher.start()
    try:
        target(*args)
    except BaseException as error:  # noqa: BLE001 - said in the driver, in one line
        number = error.errno if isinstance(error, OSError) else None
        kind = "OSError" if isinstance(error, OSError) else type(error).__name__
        message = (str(error).strip().splitlines() or [type(error).__name__])[-1]
        send.send((kind, number, message if kind == "OSError" else f"{kind}: {message}"))
        send.close()
        sys.exit(1)
    send.close()


def _watch(driver_pid: int) -> None:
    """Kill this process group once the driver is gone (we are then re-parented)."""
    while os.getppid() == driver_pid:
        time.sleep(WATCH_INTERVAL_S)
    os.killpg(0, signal.SIGKILL)
