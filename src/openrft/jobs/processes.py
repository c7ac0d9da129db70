"""Whether the process recorded for a job is still that job's process (pids are reused)."""

from __future__ import annotations


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), or None if there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return 0.0


def process_alive(pid: int | None, started: float | None) -> bool:
    """True while ``pid`` is running and is the same process that was recorded (not a reused pid)."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # a different start time means the pid now belongs to another process
        return not (started and abs(proc.create_time() - started) > 1.0)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


__all__ = ["process_alive", "process_start_time"]
