"""A detached job's process: ``python -m openrft.jobs.worker JOB_ID`` (started by ``rftj create --detach``).

It runs the job recorded in the store, printing one line per step to its output
(the job folder's ``job.log``). SIGTERM asks it to stop at the next step boundary,
like ``openrft rftj cancel``.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Sequence

from openrft.console import quiet_known_warnings
from openrft.errors import OpenRFTError


def main(argv: Sequence[str] | None = None) -> int:
    quiet_known_warnings()  # a job's log shows what concerns the job
    from openrft.jobs.runner import run_job
    from openrft.jobs.store import JobStore

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m openrft.jobs.worker JOB_ID", file=sys.stderr)
        return 2
    job_id = args[0]
    stop = [False]

    def on_term(signum, frame) -> None:
        stop[0] = True
        print(
            "SIGTERM: stopping at the next step boundary (a round being sampled is dropped)",
            file=sys.stderr,
            flush=True,
        )

    signal.signal(signal.SIGTERM, on_term)
    store = JobStore()
    print(f"job {job_id}: worker started", flush=True)
    try:
        final = run_job(store, job_id, quiet=True, log_steps=True, local_stop=stop)
    except OpenRFTError as exc:
        print(f"job {job_id} FAILED: {exc.message}", file=sys.stderr, flush=True)
        if exc.hint:
            print(f"hint: {exc.hint}", file=sys.stderr, flush=True)
        return exc.exit_code
    print(f"job {job_id} {final.state} after {final.steps} steps", flush=True)
    if final.message:
        print(final.message, flush=True)
    if final.output_dir:
        print(f"outputs: {final.output_dir}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
