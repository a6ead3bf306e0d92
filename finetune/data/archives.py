"""Data as people have it: a folder or an archive (.zip, .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz)
of many files, read as one table.

    python -m finetune data inspect my_examples.zip
    python -m finetune data inspect notes/            # a folder

One row per .txt/.md file (its whole text) and per .pdf/.docx document; one row per .json file
holding one example (a .json file holding a list gives its rows); .jsonl/.csv/.tsv/.parquet files
are read as on their own. Every file that is not read is listed with the reason (never skipped in
silence), and the table says how many files of each kind were read.

Archives are read in memory, member by member: nothing is extracted to disk, so no member can be
written outside a folder. Still, an archive whose members name paths outside it (`..`, absolute
paths) or hold links that point out of it is refused as a whole, and so is one that would unpack
to more than LIMITS allow (file count, total size, compression ratio: a decompression bomb).
"""

from __future__ import annotations

import bisect
import bz2
import gzip
import io
import lzma
import os
import posixpath
import re
import stat
import tarfile
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import orjson

from finetune.data import documents, readers
from finetune.data.readers import ARCHIVE_TYPES, RawTable
from finetune.data.types import ProblemLog
from finetune.errors import DataError

TEXT_FILES = (".txt", ".md")  # one row each: the whole text
EXAMPLE_FILES = (".json",)  # one example each (or a list of rows)
TABLE_FILES = (".jsonl", ".ndjson", ".csv", ".tsv", ".parquet")  # read as on their own
SYSTEM_FILES = {".ds_store", "thumbs.db", "desktop.ini"}
MEMBER_TYPES = [*TEXT_FILES, *EXAMPLE_FILES, *TABLE_FILES, *documents.TYPES]


@dataclass(frozen=True)
class Limits:
    """What an archive or folder may hold before it is refused (the app must stay up)."""

    files: int = 100_000  # entries
    bytes: int = 1 << 30  # unpacked, in all: 1 GiB
    ratio: int = 100  # unpacked / packed, checked once more than `ratio_from` bytes unpack
    ratio_from: int = 1 << 20


LIMITS = Limits()


def is_collection(source: str) -> bool:
    """Whether `source` names a folder or an archive file (what `read` takes)."""
    path = Path(source).expanduser()
    return path.is_dir() or (path.is_file() and is_archive(path.name))


def is_archive(name: str) -> bool:
    return name.lower().endswith(tuple(ARCHIVE_TYPES))


def read(source: str, log: ProblemLog, limits: Limits = LIMITS) -> RawTable:
    """The rows of every data file in a folder or an archive; DataError when it is refused."""
    path = Path(source).expanduser()
    collection = _Collection(path.name, log)
    log.joiner = "/"  # problems read as paths: examples.zip/chats/017.json: ...
    if path.is_dir():
        members = _folder(path, collection, limits)
    elif path.name.lower().endswith(".zip"):
        members = _zip(path, collection, limits)
    else:
        members = _tar(path, collection, limits)
    for name, data in members:
        collection.add(name, data)
    return collection.table()


# --- one member: how a file becomes rows --------------------------------------------------------


class _MemberLog:
    """The collection's log, with the member's name before each message."""

    def __init__(self, log: ProblemLog, name: str):
        self.log, self.name = log, name

    def add(self, level: str, kind: str, message: str, summary: str = "") -> None:
        self.log.add(level, kind, f"{self.name} {message}", summary=summary)


class _Collection:
    """Rows gathered file by file, with where each row came from and what was not read."""

    def __init__(self, label: str, log: ProblemLog):
        self.label, self.log = label, log
        self.rows: list = []
        self.columns: dict[str, None] = {}
        self.starts: list[int] = []  # first row of each file with rows
        self.wheres: list[Callable[[int], str]] = []
        self.read_kinds: Counter = Counter()
        self.skipped: list[dict] = []

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append({"file": name, "reason": reason})
        self.log.add("warning", "file not read", f"{name}: not read: {reason}.",
                     summary="files not read")

    def add(self, name: str, data: bytes) -> None:
        lower = name.lower()
        suffix = posixpath.splitext(lower)[1]
        base = posixpath.basename(lower)
        if base in SYSTEM_FILES or base.startswith("._") or lower.startswith("__macosx/"):
            return self.skip(name, "a file the operating system made (not data)")
        if is_archive(lower):
            return self.skip(name, "an archive inside the archive or folder; unpack it first")
        if not data.strip():
            return self.skip(name, "the file is empty")
        try:
            table = self._parse(name, suffix, data)
        except DataError as e:
            # Readers name the file first ("notes.txt is not UTF-8 ..."): name it once.
            message = str(e) if str(e).startswith(name) else f"{name}: {e}"
            reason = message.removeprefix(name).lstrip(": ")
            if isinstance(e, documents.NoText):
                return self.skip(name, reason.rstrip("."))
            self.skipped.append({"file": name, "reason": reason})
            self.log.add("error", "file unreadable", message, summary="files that could not be read")
            return None
        if table is None:
            return None
        self.read_kinds[suffix] += 1
        if table.rows:
            self.starts.append(len(self.rows))
            self.wheres.append(table.where)
            self.rows += table.rows
            self.columns.update(dict.fromkeys(table.columns))
        return None

    def _parse(self, name: str, suffix: str, data: bytes) -> RawTable | None:
        single = lambda i: name  # noqa: E731 - a file that is one row is named by itself
        if suffix in TEXT_FILES:
            return RawTable([{"text": readers.decode(data, name).strip()}], ["text"], name, single)
        if suffix in documents.TYPES:
            return readers.document_table(data, name)
        if suffix in EXAMPLE_FILES:
            return self._example(name, data)
        if suffix in TABLE_FILES:
            member_log = _MemberLog(self.log, name)
            if suffix == ".parquet":
                table = readers.read_parquet(io.BytesIO(data), name)
            else:
                table = readers.read_text(readers.decode(data, name), name, suffix, member_log)
            where = table.where
            table.where = lambda i: f"{name} {where(i)}"
            return table
        why = f"files of type '{suffix}' hold no data this tool reads" if suffix else \
            "a file without an extension"
        self.skip(name, f"{why} (it reads {', '.join(MEMBER_TYPES)})")
        return None

    def _example(self, name: str, data: bytes) -> RawTable:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:
            text = readers.decode(data, name)  # the UTF-8 and empty-file messages
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as e:
                raise DataError(f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); a "
                                ".json file holds one example, e.g. {\"messages\": [...]}.") from None
        if isinstance(value, dict):
            return RawTable([value], list(value), name, lambda i: name)
        if isinstance(value, list):
            table = readers.json_rows(value, name)
            return RawTable(table.rows, table.columns, name, lambda i: f"{name} item {i + 1}")
        raise DataError(f"holds {type(value).__name__} where one example (a JSON object) was "
                        "expected.")

    def table(self) -> RawTable:
        starts, wheres = self.starts, self.wheres

        def where(i: int) -> str:
            k = bisect.bisect_right(starts, i) - 1
            return wheres[k](i - starts[k])

        files = {"read": dict(sorted(self.read_kinds.items())), "read_total": sum(self.read_kinds.values()),
                 "not_read": self.skipped}
        return RawTable(self.rows, list(self.columns), self.label, where, files=files)


# --- where the members come from ----------------------------------------------------------------


def _refuse(label: str, why: str) -> DataError:
    return DataError(f"{label} was refused: {why}. Nothing from it was used.")


def _check_name(label: str, name: str) -> str:
    """The member's path inside the archive; refused when it points outside it."""
    clean = name.replace("\\", "/")
    while clean.startswith("./"):
        clean = clean[2:]
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise _refuse(label, f"the member '{name}' has an absolute path, which would be written "
                             "outside the folder it is unpacked into (a hostile or broken archive)")
    if ".." in clean.split("/"):
        raise _refuse(label, f"the member '{name}' uses '..' to reach outside the folder it is "
                             "unpacked into (a hostile or broken archive)")
    return clean


def _check_link(label: str, name: str, target: str, relative_to_member: bool) -> None:
    """A link inside the archive is listed as not read; a link that points out is refused."""
    target = target.replace("\\", "/")
    base = posixpath.dirname(name) if relative_to_member else ""
    resolved = posixpath.normpath(posixpath.join(base, target))
    if target.startswith("/") or re.match(r"^[A-Za-z]:", target) or resolved == ".." \
            or resolved.startswith("../"):
        raise _refuse(label, f"the member '{name}' is a link to '{target}', outside the archive "
                             "(links out of an archive are never followed)")


def _check_size(label: str, files: int, unpacked: int, packed: int, limits: Limits) -> None:
    if files > limits.files:
        raise _refuse(label, f"it holds more than {limits.files:,} files; split it into smaller "
                             "archives")
    if unpacked > limits.bytes:
        raise _refuse(label, f"it unpacks to more than {_size(limits.bytes)}; split it, or "
                             "convert it to one JSONL or Parquet file")
    if unpacked > limits.ratio_from and unpacked > limits.ratio * max(packed, 1):
        raise _refuse(label, f"it would unpack {_size(packed)} into {_size(unpacked)}, more than "
                             f"{limits.ratio} times its size (a decompression bomb, or data that "
                             "is mostly repeats)")


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def _folder(root: Path, collection: _Collection, limits: Limits) -> Iterator[tuple[str, bytes]]:
    """Files under `root` in name order; links that point out of it are listed, not followed."""
    label, top = collection.label, root.resolve()
    paths: list[tuple[str, Path]] = []
    total = 0
    pending = [(root, "")]
    while pending:
        folder, prefix = pending.pop()
        with os.scandir(folder) as entries:
            entries = sorted(entries, key=lambda e: e.name, reverse=True)
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_symlink():
                target = Path(entry.path).resolve()
                if not target.is_relative_to(top):
                    collection.skip(rel, f"a link to {target}, outside the folder (not followed)")
                    continue
                if target.is_dir():
                    collection.skip(rel + "/", "a link to a folder (not followed; its files are "
                                               "read where they are)")
                    continue
            if entry.is_dir():
                if entry.name.startswith(".") or entry.name == "__MACOSX":
                    collection.skip(rel + "/", "a hidden folder (not read)")
                else:
                    pending.append((Path(entry.path), rel + "/"))
                continue
            if not entry.is_file():
                collection.skip(rel, "not a regular file")
                continue
            total += entry.stat().st_size
            paths.append((rel, Path(entry.path)))
            _check_size(label, len(paths), total, total, limits)
    paths.sort(key=lambda p: p[0])
    # One read a file, in order: 10,000 small files take ~0.3 s here; 8 threads took ~0.65 s
    # (measured on the 2-core AMD EPYC with the files cached).
    for rel, path in paths:
        yield rel, path.read_bytes()


def _zip(path: Path, collection: _Collection, limits: Limits) -> Iterator[tuple[str, bytes]]:
    """Zip members in name order, each read in memory; every check is made on the central
    directory before a byte is unpacked (zipfile never returns more than a member declares)."""
    label = collection.label
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{label} is not a readable zip archive ({e}).") from None
    with archive:
        infos = archive.infolist()
        _check_size(label, len(infos), sum(i.file_size for i in infos), path.stat().st_size,
                    limits)
        members = []
        for info in infos:
            name = _check_name(label, info.filename)
            if stat.S_ISLNK(info.external_attr >> 16):
                _check_link(label, name, archive.read(info)[:4096].decode("utf-8", "replace"), True)
                collection.skip(name, "a link (links in an archive are not followed)")
                continue
            if info.is_dir():
                continue
            if info.file_size > limits.ratio_from and \
                    info.file_size > limits.ratio * max(info.compress_size, 1):
                raise _refuse(label, f"the member '{name}' would unpack {_size(info.compress_size)} "
                                     f"into {_size(info.file_size)}, more than {limits.ratio} times "
                                     "its size (a decompression bomb)")
            if info.flag_bits & 0x1:
                collection.skip(name, "encrypted (unzip it with its password first)")
                continue
            members.append((name, info))
        for name, info in sorted(members, key=lambda m: m[0]):
            try:
                data = archive.read(info)
            except (zipfile.BadZipFile, NotImplementedError, OSError, EOFError) as e:
                collection.skip(name, f"damaged or compressed in a way this tool cannot read ({e})")
                continue
            yield name, data


class _Capped(io.RawIOBase):
    """A stream that refuses to give more than `cap` bytes: a tar stream's headers are unpacked
    by tarfile itself, so the cap must sit below it."""

    def __init__(self, stream, cap: int, on_cap: Callable[[], DataError]):
        self.stream, self.left, self.on_cap = stream, cap, on_cap

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        self.left -= len(data)
        if self.left < 0:
            raise self.on_cap()
        buffer[:len(data)] = data
        return len(data)


def _tar(path: Path, collection: _Collection, limits: Limits) -> Iterator[tuple[str, bytes]]:
    """Tar members in name order, unpacked as one stream; each header's size is checked before
    its data is unpacked."""
    label = collection.label
    packed = path.stat().st_size
    raw = path.open("rb")
    magic = raw.read(6)
    raw.seek(0)
    if magic.startswith(b"\x1f\x8b"):
        stream = gzip.GzipFile(fileobj=raw)
    elif magic.startswith(b"BZh"):
        stream = bz2.BZ2File(raw)
    elif magic.startswith(b"\xfd7zXZ\x00"):
        stream = lzma.LZMAFile(raw)
    else:
        stream = raw
    # The headers and padding add at most a few blocks a file on top of the members' sizes.
    cap = limits.bytes + 3 * 512 * min(limits.files, 1 + limits.bytes // 512)
    capped = io.BufferedReader(_Capped(stream, cap, lambda: _refuse(
        label, f"it unpacks to more than {_size(limits.bytes)}")), 1 << 16)
    members: list[tuple[str, bytes]] = []
    count = total = 0
    try:
        with raw, tarfile.open(fileobj=capped, mode="r|") as archive:
            for member in archive:
                count += 1
                total += max(member.size, 0)
                _check_size(label, count, total, packed, limits)
                name = _check_name(label, member.name)
                if member.issym() or member.islnk():
                    _check_link(label, name, member.linkname, member.issym())
                    collection.skip(name, "a link (links in an archive are not followed)")
                elif member.isfile():
                    members.append((name, archive.extractfile(member).read()))
                elif not member.isdir():
                    collection.skip(name, "not a regular file (a device or a pipe)")
    except (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError) as e:
        raise DataError(f"{label} is not a readable tar archive ({type(e).__name__}: {e}). "
                        f"Archives read here: {', '.join(ARCHIVE_TYPES)}.") from None
    members.sort(key=lambda m: m[0])
    yield from members
