"""How long `data inspect` takes on 100,000 chat rows (the target: under 5 s on 2 cores), and
how long a .zip of 10,000 one-example JSON files, and a folder of the same files, take to load and
to preview as the Data tab does (the target: under 10 s each on 2 cores).

    python -m finetune bench data
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import orjson

N_ROWS = 100_000
N_FILES = 10_000
_WORDS = ("please order invoice shipping refund account password delivery late broken screen "
          "battery replace address change cancel subscription upgrade plan billing error login "
          "email phone number city company name contact tomorrow monday urgent thanks").split()


def make_rows(n: int, seed: int = 0):
    rng = random.Random(seed)
    system = "Classify the support ticket into one of: billing, shipping, account, technical."
    for i in range(n):
        user = " ".join(rng.choices(_WORDS, k=rng.randint(12, 60))) + f" (ticket {i})"
        answer = rng.choice(["billing", "shipping", "account", "technical"])
        yield {"messages": [{"role": "system", "content": system},
                            {"role": "user", "content": user},
                            {"role": "assistant", "content": answer}]}


def bench_data() -> dict:
    """Both benchmarks: inspect of a large JSONL file, and folders/archives of many files."""
    return {**bench_inspect(), "many_files": bench_files()}


def bench_inspect(n_rows: int | None = None) -> dict:
    """Write n_rows of chat JSONL to a temp dir and time what `data inspect` does on it: the
    summary and its text."""
    from finetune import data, hardware

    n_rows = n_rows or N_ROWS

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.jsonl"
        with path.open("wb") as f:
            for row in make_rows(n_rows):
                f.write(orjson.dumps(row) + b"\n")
        start, cpu_start = time.perf_counter(), time.process_time()
        summary = data.inspect_summary(str(path), max_length=512)
        data.format_text(summary)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    # CPU seconds and the load average tell a slow run on a busy machine from a slow program.
    return {"rows": n_rows, "seconds": round(seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "usable": summary["usable"], "cpu": hardware.cpu_model(), "cores": hardware.threads(),
            "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}


def bench_files(n_files: int | None = None) -> dict:
    """Write n_files one-example JSON files as a folder and as a .zip, and time `data.load` and
    the Data tab's preview (`preview.data_view`: load, clean, count tokens, split) of each."""
    import zipfile

    from finetune import data, preview

    n_files = n_files or N_FILES
    results = {"files": n_files}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "examples"
        folder.mkdir()
        with zipfile.ZipFile(Path(tmp) / "examples.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            for i, row in enumerate(make_rows(n_files)):
                body = orjson.dumps(row)
                (folder / f"{i:05d}.json").write_bytes(body)
                archive.writestr(f"examples/{i:05d}.json", body)
        for name, source in (("zip", Path(tmp) / "examples.zip"), ("folder", folder)):
            start, cpu_start = time.perf_counter(), time.process_time()
            loaded = data.load(str(source))
            load_s, load_cpu = time.perf_counter() - start, time.process_time() - cpu_start
            start, cpu_start = time.perf_counter(), time.process_time()
            view = preview.data_view(str(source))
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            results[name] = {"rows": len(loaded.rows), "load_seconds": round(load_s, 2),
                             "load_cpu_seconds": round(load_cpu, 2),
                             "preview_seconds": round(seconds, 2),
                             "preview_cpu_seconds": round(cpu_seconds, 2),
                             "usable": view.analysis.summary["usable"],
                             "counted_with": view.counter.note}
    return results
