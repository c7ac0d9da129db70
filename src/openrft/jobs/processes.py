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


START_TOLERANCE = 30.0  # seconds between two readings of one process's start time


def process_alive(pid: int | None, started: float | None) -> bool:
    """True while ``pid`` is running and is the same process that was recorded (not a reused pid)."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        # A different start time means the pid now belongs to another process. The two readings are
        # wall-clock times (psutil adds the boot time, read anew each time, to the start in ticks), so a
        # clock step between them moves one by whole seconds: a job was once marked dead mid-round that
        # way. pids are handed out in turn, so a reused one starts minutes or more after the first.
        return not (started and abs(proc.create_time() - started) > START_TOLERANCE)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:
        return True


__all__ = ["process_alive", "process_start_time"]
