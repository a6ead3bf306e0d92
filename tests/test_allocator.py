"""tcmalloc for training processes where it is installed (`finetune.allocator`)."""

import os
import subprocess
import sys

from finetune import allocator

LIB = "libtcmalloc_minimal.so.4"


def test_a_child_gets_tcmalloc_first_and_the_baseline_gets_it_taken_out(monkeypatch):
    monkeypatch.setattr(allocator, "find", lambda: LIB)
    env = allocator.environ({"LD_PRELOAD": "libother.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == f"{LIB}:libother.so" and env["PATH"] == "/bin"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) > 2**40  # no "large alloc" lines
    plain = allocator.environ(env, use=False)
    assert plain["LD_PRELOAD"] == "libother.so"
    assert "LD_PRELOAD" not in allocator.environ({"LD_PRELOAD": LIB}, use=False)


def test_finetune_allocator_system_keeps_the_c_librarys_malloc(monkeypatch):
    monkeypatch.setenv("FINETUNE_ALLOCATOR", "system")
    allocator.find.cache_clear()
    try:
        assert allocator.find() is None
        assert "LD_PRELOAD" not in allocator.environ({})
    finally:
        allocator.find.cache_clear()


def test_a_process_that_calls_reexec_runs_with_tcmalloc_where_installed():
    code = "from finetune import allocator; allocator.reexec(); print(allocator.in_use())"
    env = allocator.environ(dict(os.environ), use=False)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    used = out.stdout.strip()
    if allocator.find():
        assert used.startswith(allocator.find()), (used, out.stderr)
    else:
        assert used == "None"
