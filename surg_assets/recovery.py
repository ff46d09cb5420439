"""Runs left behind by a killed process: marked failed, their concurrency slots given back.

``surg analyze`` executes a case in its own process. When that process is killed (SIGKILL, a
power cut, the OOM killer) Dagster never hears of it: the run stays STARTED and keeps the
``gpu`` pool slot its step had claimed, so every later run of any case waits for that slot
forever. Runs started here carry the host and process id that executes them; before a new run,
every STARTED run of this host whose process no longer exists is reported failed and its slots
freed, so re-executing a killed case completes.
"""

from __future__ import annotations

import os
import socket
from typing import Any

HOST_TAG = "surg/host"
PID_TAG = "surg/pid"


def run_owner_tags() -> dict[str, str]:
    """Tags naming the process that executes a run (attach them to in-process runs)."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def release_orphaned_runs(instance: Any) -> list[str]:
    """Fail the STARTED runs whose executing process on this host is gone; free their slots.

    Returns:
        The ids of the runs released.
    """
    import dagster as dg

    host = socket.gethostname()
    released = []
    runs = instance.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED], tags={HOST_TAG: host})
    )
    for run in runs:
        pid = run.tags.get(PID_TAG, "")
        if not pid.isdigit() or _alive(int(pid)):
            continue
        instance.report_run_failed(run)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        released.append(run.run_id)
    return released
