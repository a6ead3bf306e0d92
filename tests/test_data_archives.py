"""Folders and archives of many files read as one dataset; hostile archives refused.

Run: python -m pytest -q tests/test_data_archives.py
"""

from __future__ import annotations

import io
import json
import os
import stat
import tarfile
import zipfile

import pytest

from finetune import data
from finetune.data import archives
from finetune.errors import DataError

EXAMPLES = {f"chats/{i:02d}.json": {"messages": [{"role": "user", "content": f"Q{i}"},
                                                 {"role": "assistant", "content": f"A{i}"}]}
            for i in range(3)}


def files() -> dict[str, bytes]:
    """A dataset as people have it: one example a file, a JSONL and a CSV beside them, an image."""
    out = {name: json.dumps(row).encode() for name, row in EXAMPLES.items()}
    out["more/rows.jsonl"] = b"\n".join(json.dumps({"messages": [
        {"role": "user", "content": q}, {"role": "assistant", "content": a}]}).encode()
        for q, a in (("Q3", "A3"), ("Q4", "A4")))
    out["more/table.csv"] = b"question,answer\nQ5,A5\n"
    out["photo.png"] = b"\x89PNG\r\n\x1a\n"
    return out


def write_folder(root, members: dict[str, bytes]):
    for name, content in members.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return root


def write_zip(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, content in members.items():
            zf.writestr(name, content)
    return path


def write_tar(path, members: dict[str, bytes], mode="w:gz"):
    with tarfile.open(path, mode) as tf:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content))
    return path


def contents(loaded) -> list[tuple[str, str]]:
    return [(r["messages"][0]["content"], r["messages"][-1]["content"]) for r in loaded.rows]


@pytest.mark.parametrize("kind", ["folder", "zip", "tar.gz", "tar"])
def test_a_folder_or_archive_reads_every_data_file(tmp_path, kind):
    members = files()
    source = {"folder": lambda: write_folder(tmp_path / "mydata", members),
              "zip": lambda: write_zip(tmp_path / "mydata.zip", members),
              "tar.gz": lambda: write_tar(tmp_path / "mydata.tar.gz", members),
              "tar": lambda: write_tar(tmp_path / "mydata.tar", members, "w")}[kind]()
    loaded = data.load(str(source))
    # Files are read in name order; the CSV's row is another format, named as such.
    assert loaded.format == "messages"
    assert contents(loaded)[:5] == [("Q0", "A0"), ("Q1", "A1"), ("Q2", "A2"), ("Q3", "A3"),
                                    ("Q4", "A4")]
    assert loaded.files["read"] == {".csv": 1, ".json": 3, ".jsonl": 1}
    assert loaded.files["read_total"] == 5
    (skipped,) = loaded.files["not_read"]
    assert skipped["file"] == "photo.png" and "'.png' hold no data" in skipped["reason"]
    assert any(f"{source.name}/photo.png: not read" in p.message for p in loaded.problems)
    assert any(f"{source.name}/more/table.csv row 1 (line 2): this row is prompt_completion"
               in p.message for p in loaded.problems)


def test_text_files_are_one_row_each_and_the_report_counts_files(tmp_path):
    folder = write_folder(tmp_path / "notes", {"a.txt": b"First note.\nSecond line.\n",
                                               "b.md": b"# Title\n\nBody.", "empty.txt": b"\n",
                                               ".git/config": b"[core]"})
    summary = data.analyze(str(folder)).summary
    assert summary["format"] == "text" and summary["usable"]
    assert [r for r in data.load(str(folder)).rows] == [{"text": "First note.\nSecond line."},
                                                        {"text": "# Title\n\nBody."}]
    assert summary["files"]["read"] == {".md": 1, ".txt": 1}
    reasons = {f["file"]: f["reason"] for f in summary["files"]["not_read"]}
    assert reasons == {".git/": "a hidden folder (not read)", "empty.txt": "the file is empty"}
    text = data.format_text(summary)
    assert "files:    2 read (1 .md, 1 .txt), 2 not read (each listed under problems)" in text


def test_a_broken_file_is_named_and_the_rest_is_read(tmp_path):
    members = {"01.json": json.dumps({"question": "Q", "answer": "A"}).encode(),
               "02.json": b'{"question": "Q2", "answer": ', "03.json": b"\xff\xfe{}"}
    loaded = data.load(str(write_zip(tmp_path / "qa.zip", members)))
    assert loaded.format == "prompt_completion" and loaded.mapping_guessed
    assert contents(loaded) == [("Q", "A")]
    errors = [p.message for p in loaded.errors]
    assert any(m.startswith("qa.zip/02.json: not valid JSON (line 1") for m in errors), errors
    assert any(m.startswith("qa.zip/03.json is UTF-16 text") for m in errors), errors


def test_the_cli_inspects_an_archive(tmp_path, capsys):
    from finetune.cli import main

    path = write_zip(tmp_path / "chats.zip", {n: json.dumps(r).encode() for n, r in EXAMPLES.items()})
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "files:    3 read (3 .json)" in out and "3 read, 3 usable" in out


# --- hostile archives: each refused with a clear message; nothing is read --------------------


def refused(path, limits=archives.LIMITS) -> str:
    with pytest.raises(DataError) as e:
        archives.read(str(path), data.types.ProblemLog(path.name), limits)
    assert "was refused" in str(e.value) and "Nothing from it was used" in str(e.value)
    return str(e.value)


def test_a_member_outside_the_archive_is_refused(tmp_path):
    message = refused(write_zip(tmp_path / "dots.zip", {"ok.json": b"{}", "../../evil.json": b"{}"}))
    assert "'../../evil.json' uses '..'" in message
    assert "uses '..'" in refused(write_tar(tmp_path / "dots.tgz", {"a/../../evil.json": b"{}"}))
    message = refused(write_tar(tmp_path / "abs.tar.gz", {"/etc/evil.json": b"{}"}))
    assert "'/etc/evil.json' has an absolute path" in message
    assert "absolute path" in refused(write_zip(tmp_path / "drive.zip", {"C:/evil.json": b"{}"}))


def test_a_link_out_of_the_archive_is_refused(tmp_path):
    path = tmp_path / "link.tar"
    with tarfile.open(path, "w") as tf:
        link = tarfile.TarInfo("data/passwd.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "../../../etc/passwd"
        tf.addfile(link)
    assert "'data/passwd.txt' is a link to '../../../etc/passwd'" in refused(path)
    zipped = tmp_path / "link.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        info = zipfile.ZipInfo("notes.txt")
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(info, "/home/user/.ssh/id_rsa")
    assert "is a link to '/home/user/.ssh/id_rsa'" in refused(zipped)
    # A link that stays inside is listed as not read; the file it points to is read.
    inside = tmp_path / "inside.tar"
    with tarfile.open(inside, "w") as tf:
        body = b'{"text": "hello"}'
        info = tarfile.TarInfo("a.json")
        info.size = len(body)
        tf.addfile(info, io.BytesIO(body))
        link = tarfile.TarInfo("b.json")
        link.type, link.linkname = tarfile.SYMTYPE, "a.json"
        tf.addfile(link)
    loaded = data.load(str(inside))
    assert loaded.rows == [{"text": "hello"}]
    assert loaded.files["not_read"] == [{"file": "b.json", "reason": "a link (links in an archive "
                                                                     "are not followed)"}]


def test_a_link_out_of_a_folder_is_listed_not_followed(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("HF_TOKEN=hf_not_for_you")
    folder = write_folder(tmp_path / "notes", {"a.txt": b"a note"})
    os.symlink(secret, folder / "b.txt")
    loaded = data.load(str(folder))
    assert loaded.rows == [{"text": "a note"}]
    (skipped,) = loaded.files["not_read"]
    assert skipped["file"] == "b.txt" and "outside the folder (not followed)" in skipped["reason"]


def test_a_decompression_bomb_is_refused(tmp_path):
    zeros = b"\0" * (4 << 20)  # 4 MiB that pack into a few KiB
    message = refused(write_zip(tmp_path / "bomb.zip", {"big.txt": zeros}))
    assert "more than 100 times its size (a decompression bomb" in message
    message = refused(write_tar(tmp_path / "bomb.tar.gz", {"big.txt": zeros}))
    assert "more than 100 times its size" in message


def test_caps_on_files_and_unpacked_size(tmp_path):
    many = {f"{i}.json": b'{"text": "x"}' for i in range(6)}
    small = archives.Limits(files=5)
    assert "more than 5 files" in refused(write_zip(tmp_path / "many.zip", many), small)
    assert "more than 5 files" in refused(write_tar(tmp_path / "many.tgz", many), small)
    assert "more than 5 files" in refused(write_folder(tmp_path / "many", many), small)
    noise = {"a.txt": os.urandom(3000).hex().encode()}  # does not compress: no bomb, just big
    tiny = archives.Limits(bytes=4000)
    assert "unpacks to more than 3.9 KiB" in refused(write_zip(tmp_path / "big.zip", noise), tiny)
    assert "unpacks to more than 3.9 KiB" in refused(write_tar(tmp_path / "big.tgz", noise), tiny)


def test_a_folder_without_data_files_says_so(tmp_path):
    folder = write_folder(tmp_path / "photos", {"a.png": b"\x89PNG", "b.jpg": b"\xff\xd8"})
    with pytest.raises(DataError) as e:
        data.load(str(folder))
    assert "photos: no data file could be read in it (2 files not read)" in str(e.value)
    assert "photos/a.png: not read: files of type '.png'" in str(e.value)


def test_a_damaged_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DataError, match="broken.zip is not a readable zip archive"):
        data.load(str(bad))
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 truncated")
    with pytest.raises(DataError, match="broken.tar.gz is not a readable tar archive"):
        data.load(str(bad))
