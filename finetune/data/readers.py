"""Read a data source into raw rows: files (JSONL, JSON, CSV/TSV, Parquet, TXT), samples, the Hub.

Every failure is a DataError naming the file and, where there is one, the line or byte.

    python -m finetune data inspect my.csv
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import orjson

from finetune.data import documents
from finetune.data.types import ProblemLog
from finetune.errors import DataError

SAMPLES_DIR = Path(__file__).resolve().parent.parent / "samples"
FILE_TYPES = [".jsonl", ".json", ".csv", ".tsv", ".parquet", ".txt", ".md", ".pdf", ".docx"]
# Read by finetune.data.archives as one table (a folder is read the same way).
ARCHIVE_TYPES = [".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz"]
_HUB_ID = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)(?::(?P<config>[\w.-]+))?(?:@(?P<split>[\w.:%\[\]-]+))?$")


@dataclass
class RawTable:
    rows: list  # parsed rows, normally dicts
    columns: list[str]
    label: str  # how messages name the source: a file name, sample:NAME, a Hub id
    where: Callable[[int], str] = field(default=lambda i: f"row {i + 1}")
    files: dict | None = None  # a folder or archive: files read per kind, and those not read


# --- samples ----------------------------------------------------------------------------------


def sample_names() -> list[str]:
    return sorted(p.name for p in SAMPLES_DIR.iterdir() if (p / "train.jsonl").is_file())


def sample_path(name: str, split: str = "train") -> Path:
    name = name.removeprefix("sample:").strip()
    if name not in sample_names():
        raise DataError(f"There is no bundled sample '{name}'. Samples: {', '.join(sample_names())}.")
    path = SAMPLES_DIR / name / f"{split}.jsonl"
    if not path.is_file():
        splits = sorted(p.stem for p in (SAMPLES_DIR / name).glob("*.jsonl"))
        raise DataError(f"Sample '{name}' has no '{split}' split; it has {', '.join(splits)}.")
    return path


# --- dispatch ---------------------------------------------------------------------------------


def read(source: str, log: ProblemLog) -> RawTable:
    source = (source or "").strip()
    if not source:
        raise DataError("No data given: upload a file, pick a bundled sample "
                        f"({', '.join('sample:' + n for n in sample_names())}) or type a Hub dataset id.")
    if source.startswith("sample:"):
        table = read_file(sample_path(source), log)
        table.label = source
        return table
    path = Path(source).expanduser()
    if path.is_file():
        return read_file(path, log)
    if is_hub_id(source):
        match = _HUB_ID.match(source)
        return read_hub(match["repo"], match["config"], match["split"])
    raise DataError(f"File {source} does not exist. Give a path to a data file "
                    f"({', '.join(FILE_TYPES)}), a folder or an archive ({', '.join(ARCHIVE_TYPES)}), "
                    "sample:NAME, or a Hub id such as 'owner/name'.")


def is_hub_id(source: str) -> bool:
    """Whether `source` reads as a Hub dataset id (owner/name[:config][@split]), not a file."""
    path = Path(source)
    return bool(_HUB_ID.match(source)) and path.suffix.lower() not in FILE_TYPES \
        and not source.lower().endswith(tuple(ARCHIVE_TYPES)) \
        and not source.startswith((".", "/", "~")) and not path.exists()


def read_file(path: Path, log: ProblemLog) -> RawTable:
    suffix = path.suffix.lower()
    label = path.name
    if suffix == ".parquet":
        return read_parquet(path, label)
    if suffix in documents.TYPES:
        return document_table(path.read_bytes(), label)
    if suffix not in FILE_TYPES + [".ndjson", ""]:
        raise DataError(f"{label}: files of type '{suffix}' are not supported; use "
                        f"{', '.join(FILE_TYPES)}, or a folder or an archive "
                        f"({', '.join(ARCHIVE_TYPES)}) of such files.")
    return read_text(decode(path.read_bytes(), label), label, suffix, log)


def document_table(data: bytes, label: str) -> RawTable:
    """A PDF or DOCX file: one row of its text."""
    return RawTable([{"text": documents.text(data, label)}], ["text"], label, lambda i: label)


def read_text(text: str, label: str, suffix: str, log) -> RawTable:
    """The rows of a text file's content, by its type: CSV/TSV, TXT (a document a line), JSON
    or JSONL. `log` takes the problems of single lines."""
    if suffix in (".csv", ".tsv"):
        return _read_csv(text, label, "\t" if suffix == ".tsv" else ",")
    if suffix == ".txt":
        return _read_txt(text, label)
    if suffix == ".md":  # a document: one row of its whole text
        return RawTable([{"text": text.strip()}], ["text"], label, lambda i: label)
    if suffix == "" and not text.lstrip().startswith(("{", "[")):
        raise DataError(f"{label} has no file extension and does not look like JSON; name it "
                        f"with one of {', '.join(FILE_TYPES)}.")
    return _read_json(text, label, log)


def decode(data: bytes, label: str) -> str:
    """UTF-8 text, or a DataError saying where the first byte that is not UTF-8 sits."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise DataError(f"{label} is UTF-16 text; save it as UTF-8 (in most editors: Save as... "
                        "with encoding UTF-8).")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(f"{label} is not UTF-8 text: byte {e.start} (line {line}, column {column}) "
                        f"is 0x{data[e.start]:02x}. Save the file as UTF-8, e.g. "
                        f"`iconv -f latin1 -t utf-8 {label} > fixed{Path(label).suffix}`.") from None
    if not text.strip():
        raise DataError(f"{label} is empty ({len(data)} bytes, no rows). Upload a file with data.")
    return text


# --- formats on disk --------------------------------------------------------------------------


def _read_json(text: str, label: str, log) -> RawTable:
    stripped = text.lstrip()
    if stripped.startswith("["):
        return _json_document(text, label)
    # Lines split on "\n" only: JSON strings may hold U+2028 and other characters that
    # str.splitlines() would also break at.
    lines = text.split("\n")
    if stripped.startswith("{") and not _parses(lines[_first_nonblank(lines)]):
        try:  # one pretty-printed object; otherwise JSONL whose first line is broken
            return _json_value(orjson.loads(text), label)
        except orjson.JSONDecodeError:
            pass
    rows, numbers = [], []
    for n, line in enumerate(lines, 1):
        try:
            rows.append(orjson.loads(line))
            numbers.append(n)
        except orjson.JSONDecodeError as e:
            if not line.strip():
                continue
            snippet = line.strip()[:60] + ("..." if len(line.strip()) > 60 else "")
            log.add("error", "invalid JSON",
                    f"line {n}: not valid JSON ({e.msg} at column {e.colno}): {snippet!r}. "
                    "Each line of a JSONL file must hold one complete JSON object.",
                    summary="invalid JSON")
    return RawTable(rows, _columns(rows), label, lambda i: f"line {numbers[i]}")


def _json_document(text: str, label: str) -> RawTable:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as e:
        raise DataError(f"{label} line {e.lineno}, column {e.colno}: not valid JSON ({e.msg}). "
                        "Use a JSON array of objects, or JSONL (one object per line).") from None
    return _json_value(value, label)


def _json_value(value, label: str) -> RawTable:
    if isinstance(value, dict):
        lists = [(k, len(v)) for k, v in value.items() if isinstance(v, list)]
        hint = ""
        if lists:
            key, n = max(lists, key=lambda kv: kv[1])
            hint = f" The rows seem to be under '{key}' ({n} items): save that list on its own."
        raise DataError(f"{label} holds one JSON object (keys: {', '.join(list(value)[:10])}) "
                        f"where a list of rows was expected: use a JSON array [{{...}}, {{...}}] "
                        f"or JSONL (one object per line).{hint}")
    if not isinstance(value, list):
        raise DataError(f"{label} holds a single {type(value).__name__} where a list of rows was "
                        "expected: use a JSON array of objects or JSONL.")
    return json_rows(value, label)


def json_rows(value: list, label: str) -> RawTable:
    """The rows of a JSON array."""
    return RawTable(value, _columns(value), label, lambda i: f"item {i + 1}")


def _read_csv(text: str, label: str, sep: str) -> RawTable:
    import io

    import pandas as pd

    try:
        frame = pd.read_csv(io.StringIO(text), sep=sep, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        detail = str(e).strip().replace("\n", " ")
        raise DataError(f"{label}: could not read it as {'TSV' if sep == chr(9) else 'CSV'} "
                        f"({detail}). Check the quoting and the number of columns in each line.") from None
    rows = frame.to_dict("records")
    # Cells that hold JSON lists (a messages column written by pandas/Excel) are read back as lists.
    for row in rows:
        for key, value in row.items():
            if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
                try:
                    row[key] = orjson.loads(value)
                except orjson.JSONDecodeError:
                    pass
    return RawTable(rows, [str(c) for c in frame.columns], label,
                    lambda i: f"row {i + 1} (line {i + 2})")


def _read_txt(text: str, label: str) -> RawTable:
    rows, numbers = [], []
    for n, line in enumerate(text.split("\n"), 1):
        if line.strip():
            rows.append({"text": line.rstrip("\r")})
            numbers.append(n)
    return RawTable(rows, ["text"], label, lambda i: f"line {numbers[i]}")


def read_parquet(source, label: str) -> RawTable:
    """A Parquet file: a path, or a file object holding its bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{label}: not a readable Parquet file ({e}).") from None
    if table.num_rows == 0:
        raise DataError(f"{label} is empty (a Parquet file with 0 rows).")
    return RawTable(table.to_pylist(), table.column_names, label)


# --- the Hub ----------------------------------------------------------------------------------


def read_hub(repo: str, config: str | None, split: str | None) -> RawTable:
    """A Hub dataset split; offline or unreachable is a quick DataError, never a hang."""
    label = repo + (f":{config}" if config else "") + f"@{split or 'train'}"
    offline = any(os.environ.get(v, "") not in ("", "0", "false", "False")
                  for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if not offline and not _hub_reachable():
        raise DataError(f"Hub dataset '{label}': huggingface.co is not reachable from here. "
                        "Download the data elsewhere and upload the file, or use a bundled sample.")
    import datasets

    try:
        ds = datasets.load_dataset(repo, config, split=split or "train")
    except ValueError as e:  # unknown split or config: the message lists what exists
        raise DataError(f"Hub dataset '{label}': {e}") from None
    except Exception as e:  # noqa: BLE001 - network/cache/auth failures all mean "cannot load"
        why = ("HF_HUB_OFFLINE is set and it is not in the local cache" if offline
               else f"{type(e).__name__}: {str(e)[:300]}")
        raise DataError(f"Hub dataset '{label}' could not be loaded ({why}). Check the id "
                        "(owner/name, optionally :config and @split), or upload the data as a "
                        "file, or use a bundled sample.") from None
    if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - split is always given
        ds = ds[next(iter(ds))]
    return RawTable(ds.to_list(), list(ds.column_names), label)


def _hub_reachable(timeout: float = 4.0) -> bool:
    """A TCP connect to the Hub in a thread, so that a slow DNS lookup cannot hang the caller."""
    import socket

    result = []

    def probe():
        try:
            socket.create_connection(("huggingface.co", 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(timeout + 0.5)
    return bool(result)


# --- helpers ----------------------------------------------------------------------------------


def _parses(line: str) -> bool:
    try:
        orjson.loads(line)
        return True
    except orjson.JSONDecodeError:
        return False


def _first_nonblank(lines: list[str]) -> int:
    return next(i for i, line in enumerate(lines) if line.strip())


def _columns(rows: list) -> list[str]:
    """Column names in first-seen order."""
    seen: dict[str, None] = {}
    for row in rows:
        if isinstance(row, dict):
            seen.update(dict.fromkeys(row))
    return list(seen)


def write_jsonl(rows: list[dict], path: Path) -> Path:
    """Normalized rows as JSONL (what `load` reads back as the same rows)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as f:
        for row in rows:
            f.write(orjson.dumps(row) + b"\n")
    tmp.replace(path)
    return path
