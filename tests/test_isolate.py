"""Torch work in a thread of its own (`finetune.isolate`): the result or the error comes back,
the caller's context goes along, the thread has ended, and a command's main thread runs its own
work (so Ctrl-C reaches the cleanup)."""

from __future__ import annotations

import contextvars
import threading

import pytest

from finetune import isolate
from finetune.errors import RunError

REQUEST = contextvars.ContextVar("request", default="none")


def test_work_runs_in_a_thread_that_ends_and_keeps_the_callers_context():
    REQUEST.set("this request")
    seen: list = []

    def work(x, fail=False):
        seen.append((threading.current_thread(), REQUEST.get()))
        if fail:
            raise RunError("the run is gone")
        return x * 2

    assert isolate.run(work, 21) == 42
    with pytest.raises(RunError, match="the run is gone"):
        isolate.run(work, 1, fail=True)
    assert [ctx for _, ctx in seen] == ["this request"] * 2
    assert all(t is not threading.main_thread() and not t.is_alive() for t, _ in seen)


def test_off_main_isolates_only_work_asked_by_other_threads():
    ran_in: list = []

    @isolate.off_main
    def work():
        ran_in.append(threading.current_thread())

    work()  # a command's main thread: directly
    asker = threading.Thread(target=work)  # a Gradio worker: in a thread of its own
    asker.start()
    asker.join()
    assert ran_in[0] is threading.main_thread()
    assert ran_in[1] is not asker and not ran_in[1].is_alive()
