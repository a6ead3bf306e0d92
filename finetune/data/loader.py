"""`load()`: read any supported source and return normalized rows plus the problems found.

    python -m finetune data inspect sample:contacts
"""

from __future__ import annotations

from finetune.data import archives, formats, readers
from finetune.data.types import Loaded, ProblemLog
from finetune.errors import DataError


def load(source: str, fmt: str = "auto", mapping: dict | None = None,
         system_prompt: str = "") -> Loaded:
    """Normalized rows of `source`: a file path, a folder or an archive of files, sample:NAME, or
    a Hub id owner/name[:config][@split].

    Raises DataError when nothing usable can be read; otherwise row-level problems are listed in
    Loaded.problems ("error": the data should be fixed before training; "warning": rows skipped).
    """
    fmt = (fmt or "auto").strip().lower()
    try:
        log = ProblemLog(source)
        table = (archives.read(source, log) if archives.is_collection(source)
                 else readers.read(source, log))
        log.source = table.label
        rows, fmt_used, skipped, guessed = formats.normalize(table, fmt, mapping, system_prompt, log)
    except DataError:
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - a bad file must only ever surface as a DataError
        raise DataError(f"{source}: could not be read ({type(e).__name__}: {e}).") from e
    invalid_json = log.count_kind("invalid JSON")
    n_raw = len(table.rows) + invalid_json
    if invalid_json:
        skipped = {"invalid JSON": invalid_json, **skipped}
    problems = log.problems()
    if not rows and table.files is not None and not table.files["read_total"]:
        first = "\n  - ".join(p.message for p in problems[:6])
        raise DataError(f"{table.label}: no data file could be read in it "
                        f"({len(table.files['not_read'])} files not read). Files read: "
                        f"{', '.join(archives.MEMBER_TYPES)}." + (f"\n  - {first}" if first else ""))
    if not rows:
        reasons = "; ".join(f"{n} {why}" for why, n in skipped.items()) or "no rows"
        first = "\n  - ".join(p.message for p in problems[:6])
        raise DataError(f"{table.label}: no usable rows ({n_raw} read: {reasons})."
                        + (f"\n  - {first}" if first else ""))
    return Loaded(rows=rows, format=fmt_used, source=source, columns=list(table.columns),
                  problems=problems, n_raw=n_raw, detected=(fmt == "auto"), skipped=skipped,
                  mapping=guessed or {k: v for k, v in (mapping or {}).items() if v},
                  mapping_guessed=bool(guessed), files=table.files)
