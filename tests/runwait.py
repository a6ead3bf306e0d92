"""Waiting for a background run in tests (test_jobs, test_launch): not a conftest function, since
`from conftest import ...` finds tests/browser/conftest.py when the whole suite runs."""

from __future__ import annotations


def wait_for_run(run_dir, predicate, timeout=180):
    """The run's status once predicate(status) holds; AssertionError with the log's tail if it
    does not within timeout seconds."""
    import time

    from finetune import jobs, runinfo

    deadline = time.time() + timeout
    while time.time() < deadline:
        st = jobs.status(run_dir)
        if predicate(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"timed out; status: {jobs.status(run_dir)}\n{runinfo.log_tail(run_dir)}")
