"""Bad inputs: each gets a DataError or a problem that names the file, line/row and field.

Run: python -m pytest -q tests/test_data_problems.py
"""

from __future__ import annotations

import json
import time

import pytest

from finetune import data
from finetune.errors import DataError

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
GOOD = json.dumps({"messages": CHAT})


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


def messages(loaded):
    return "\n".join(p.message for p in loaded.problems)


def test_invalid_json_names_the_line(tmp_path):
    path = write(tmp_path, "bad.jsonl", f"{GOOD}\n{GOOD}\n{{\"messages\": [oops]}}\n{GOOD}\n")
    loaded = data.load(path)
    errors = loaded.errors
    assert len(errors) == 1 and "bad.jsonl line 3: not valid JSON" in errors[0].message
    assert len(loaded.rows) == 3 and loaded.n_raw == 4
    with pytest.raises(DataError, match="line 3: not valid JSON"):  # training refuses it
        from finetune.config import RunConfig

        data.prepare(RunConfig(data=path), 0.1)


def test_invalid_json_array_names_line_and_column(tmp_path):
    with pytest.raises(DataError, match=r"a.json line 2, column \d+: not valid JSON"):
        data.load(write(tmp_path, "a.json", '[{"text": "a"},\n {"text": }]'))


def test_empty_file(tmp_path):
    for name in ("e.jsonl", "e.csv", "e.txt"):
        with pytest.raises(DataError, match=f"{name} is empty"):
            data.load(write(tmp_path, name, "\n  \n"))


def test_not_utf8_gives_byte_offset_and_line(tmp_path):
    raw = f"{GOOD}\n".encode() + '{"text": "caf\u00e9"}\n'.encode("latin-1")
    with pytest.raises(DataError) as e:
        data.load(write(tmp_path, "latin.jsonl", raw))
    offset = raw.index(b"\xe9")
    assert f"byte {offset} (line 2, column 14)" in str(e.value) and "0xe9" in str(e.value)
    assert "UTF-8" in str(e.value)


def test_json_object_where_a_list_was_expected(tmp_path):
    doc = {"version": 1, "data": [{"messages": CHAT}] * 3}
    with pytest.raises(DataError) as e:
        data.load(write(tmp_path, "obj.json", json.dumps(doc, indent=2)))
    assert "obj.json holds one JSON object" in str(e.value)
    assert "under 'data' (3 items)" in str(e.value)
    # The same mistake inside a row: messages as an object.
    path = write(tmp_path, "row.jsonl", GOOD + "\n" + json.dumps({"messages": CHAT[0]}) + "\n")
    text = messages(data.load(path))
    assert "row.jsonl line 2, field 'messages': a JSON object where a list" in text


def test_unknown_columns_lists_found_and_expected(tmp_path):
    with pytest.raises(DataError) as e:
        data.load(write(tmp_path, "x.jsonl", '{"foo": 1, "bar": 2}\n'))
    msg = str(e.value)
    assert "x.jsonl" in msg and "(foo, bar)" in msg
    for expected in ("messages", "conversations", "instruction", "prompt, completion", "text"):
        assert expected in msg


def test_unknown_role(tmp_path):
    bad = {"messages": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]}
    loaded = data.load(write(tmp_path, "r.jsonl", f"{GOOD}\n{json.dumps(bad)}\n"))
    assert "r.jsonl line 2, messages[1].role: unknown role 'bot'" in messages(loaded)
    assert len(loaded.rows) == 1 and loaded.problems[0].level == "warning"


def test_empty_response_and_no_final_answer(tmp_path):
    empty = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": " "}]}
    open_ended = {"messages": [{"role": "user", "content": "Q"}]}
    alpaca = {"instruction": "Do it", "output": ""}
    path = write(tmp_path, "e.jsonl", "\n".join(map(json.dumps, [empty, open_ended, {"messages": CHAT}])))
    text = messages(data.load(path))
    assert "e.jsonl line 1, field 'messages[1].content': the assistant reply is empty" in text
    assert "e.jsonl line 2, field 'messages': the last message is from 'user'" in text
    path = write(tmp_path, "a.jsonl", json.dumps(alpaca) + "\n" + json.dumps(
        {"instruction": "x", "output": "y"}))
    assert "a.jsonl line 1, field 'output': the assistant reply is empty" in messages(data.load(path))


def test_no_usable_rows(tmp_path):
    bad = {"messages": [{"role": "tool", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    with pytest.raises(DataError) as e:
        data.load(write(tmp_path, "n.jsonl", json.dumps(bad) + "\n"))
    assert "n.jsonl: no usable rows (1 read: 1 unusable)" in str(e.value)
    assert "unknown role 'tool'" in str(e.value)


def test_rows_mixing_formats(tmp_path):
    rows = [{"messages": CHAT}] * 3 + [{"instruction": "I", "output": "O"}]
    loaded = data.load(write(tmp_path, "mix.jsonl", "\n".join(map(json.dumps, rows))))
    assert loaded.format == "messages"
    (err,) = loaded.errors
    assert "mix.jsonl line 4: this row is alpaca" in err.message and "the data is messages" in err.message


def test_many_problems_are_summarized(tmp_path):
    bad = json.dumps({"messages": [{"role": "user", "content": "Q"}, {"role": "bot", "content": "A"}]})
    loaded = data.load(write(tmp_path, "m.jsonl", "\n".join([GOOD] + [bad] * 50)))
    assert len(loaded.problems) == 5
    assert "46 more rows with the same problem (unknown role 'bot'); 50 in all" in messages(loaded)


def test_long_rows_counted_with_the_choice(tmp_path):
    rows = [{"text": "word " * 400}, {"text": "short"}]
    path = write(tmp_path, "long.jsonl", "\n".join(map(json.dumps, rows)))
    summary = data.analyze(path, max_length=64).summary
    assert summary["tokens"]["longer"] == 1
    warning = [p["message"] for p in summary["problems"] if p["level"] == "warning"][0]
    assert "1 of 2 rows are longer than the max length of 64 tokens" in warning
    assert "truncates" in warning and "drop these rows" in warning
    dropped = data.analyze(path, max_length=64, drop_long=True)
    assert dropped.summary["rows"]["long_dropped"] == 1 and dropped.rows == [{"text": "short"}]
    # A cut chosen from the counted lengths (the Data tab's auto) is used like a given one.
    seen = []
    auto = data.analyze(path, choose_cut=lambda lengths: seen.append(lengths) or 64,
                        drop_long=True)
    assert seen and auto.summary["tokens"]["max_length"] == 64
    assert auto.summary["rows"]["long_dropped"] == 1 and auto.rows == [{"text": "short"}]


def test_missing_file_and_bad_type(tmp_path):
    with pytest.raises(DataError, match="File missing.jsonl does not exist"):
        data.load("missing.jsonl")
    with pytest.raises(DataError, match="'.xlsx' are not supported"):
        data.load(write(tmp_path, "d.xlsx", "x"))


def test_hub_offline_is_a_quick_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(DataError) as e:
        data.load("someone/some-dataset:cfg@validation")
    assert time.perf_counter() - start < 20
    assert "someone/some-dataset:cfg@validation" in str(e.value)
    assert "HF_HUB_OFFLINE" in str(e.value) and "upload" in str(e.value)


@pytest.mark.parametrize("content", [
    b"\x00\x01\x02garbage", b"[1, 2, 3]", b'"just a string"', b"{\"messages\": 5}\n",
    b'[{"messages": [{"role": "user"}]}]', b'{"a": [}', b"\xef\xbb\xbf" + GOOD.encode(),
    b'{"conversations": [["human", "hi"]]}', b'{"text": {"nested": 1}}\n{"text": "ok"}',
])
def test_bad_files_only_ever_raise_data_error(tmp_path, content):
    path = write(tmp_path, "f.jsonl", content)
    try:
        loaded = data.load(path)
    except DataError as e:
        assert "f.jsonl" in str(e)
    else:
        assert loaded.rows  # what loaded is usable; the rest is in problems
