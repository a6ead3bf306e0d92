"""Each supported format and file type loads and normalizes to chat messages (or text).

Run: python -m pytest -q tests/test_data_formats.py
"""

from __future__ import annotations

import json

import pytest

from finetune import data
from finetune.errors import DataError

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def jsonl(rows):
    return "\n".join(json.dumps(r) for r in rows) + "\n"


def test_messages_jsonl(tmp_path):
    loaded = data.load(write(tmp_path, "chat.jsonl", jsonl([{"messages": CHAT, "id": 7}] * 2)))
    assert loaded.format == "messages" and loaded.detected
    assert loaded.rows == [{"messages": CHAT}] * 2
    assert loaded.n_raw == 2 and loaded.problems == []
    assert loaded.ignored_columns == ["id"]


def test_sharegpt_json_array(tmp_path):
    rows = [{"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                               {"from": "gpt", "value": "A"}]}]
    loaded = data.load(write(tmp_path, "sg.json", json.dumps(rows)))
    assert loaded.format == "sharegpt"
    assert loaded.rows[0]["messages"] == [{"role": "system", "content": "S"},
                                          {"role": "user", "content": "Q"},
                                          {"role": "assistant", "content": "A"}]


def test_alpaca_csv_with_input_and_history(tmp_path):
    text = "instruction,input,output\nTranslate,bonjour,hello\nSay hi,,hi\n"
    loaded = data.load(write(tmp_path, "a.csv", text))
    assert loaded.format == "alpaca"
    assert loaded.rows[0]["messages"] == [{"role": "user", "content": "Translate\n\nbonjour"},
                                          {"role": "assistant", "content": "hello"}]
    assert loaded.rows[1]["messages"][0]["content"] == "Say hi"
    hist = [{"instruction": "Q2", "output": "A2", "history": [["Q1", "A1"]]}]
    loaded = data.load(write(tmp_path, "h.jsonl", jsonl(hist)))
    assert [m["content"] for m in loaded.rows[0]["messages"]] == ["Q1", "A1", "Q2", "A2"]


def test_prompt_completion_tsv_and_system_prompt(tmp_path):
    path = write(tmp_path, "pc.tsv", "prompt\tcompletion\n2+2?\t4\n")
    loaded = data.load(path, system_prompt="You add numbers.")
    assert loaded.format == "prompt_completion"
    assert loaded.rows[0]["messages"] == [{"role": "system", "content": "You add numbers."},
                                          {"role": "user", "content": "2+2?"},
                                          {"role": "assistant", "content": "4"}]


def test_conversational_prompt_completion(tmp_path):
    row = {"prompt": [{"role": "user", "content": "Q"}],
           "completion": [{"role": "assistant", "content": "A"}]}
    loaded = data.load(write(tmp_path, "c.jsonl", jsonl([row])))
    assert loaded.rows[0]["messages"][-1] == {"role": "assistant", "content": "A"}


def test_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pylist([{"messages": CHAT}, {"messages": CHAT[1:]}]), path)
    loaded = data.load(str(path))
    assert loaded.format == "messages" and len(loaded.rows) == 2
    assert loaded.rows[1]["messages"][0] == {"role": "user", "content": "Hi"}


def test_text_file_and_text_column(tmp_path):
    loaded = data.load(write(tmp_path, "notes.txt", "first doc\n\nsecond doc\n"))
    assert loaded.format == "text" and loaded.rows == [{"text": "first doc"}, {"text": "second doc"}]
    loaded = data.load(write(tmp_path, "t.jsonl", jsonl([{"text": "a"}, {"text": "b"}])))
    assert loaded.format == "text" and len(loaded.rows) == 2


def test_column_mapping_and_forced_format(tmp_path):
    path = write(tmp_path, "qa.csv", "frage,antwort\nWhy?,Because.\n")
    with pytest.raises(DataError) as e:
        data.load(path)
    assert "Map your columns" in str(e.value) and "frage, antwort" in str(e.value)
    mapping = data.parse_mapping("prompt=frage, completion=antwort")
    loaded = data.load(path, mapping=mapping)
    assert loaded.rows[0]["messages"][-1]["content"] == "Because."
    assert loaded.mapping == mapping and not loaded.mapping_guessed
    with pytest.raises(DataError, match="'frag' is not a column of qa.csv"):
        data.load(path, mapping={"prompt": "frag", "completion": "antwort"})
    # A forced format reads rows as that format even where another would be detected.
    rows = [{"text": "t", "prompt": "p", "completion": "c"}]
    forced = data.load(write(tmp_path, "both.jsonl", jsonl(rows)), fmt="text")
    assert forced.format == "text" and not forced.detected and forced.rows == [{"text": "t"}]


def test_samples():
    assert set(data.sample_names()) >= {"contacts", "tickets", "rewrite"}
    loaded = data.load("sample:contacts")
    assert loaded.format == "messages" and len(loaded.rows) == 360
    assert data.sample_path("contacts", "test").name == "test.jsonl"
    with pytest.raises(DataError, match="no bundled sample 'nope'.*contacts"):
        data.load("sample:nope")


def test_roles_are_normalized(tmp_path):
    row = {"messages": [{"role": "Human", "content": "Q"}, {"role": "model", "content": "A"}]}
    loaded = data.load(write(tmp_path, "r.jsonl", jsonl([row])))
    assert [m["role"] for m in loaded.rows[0]["messages"]] == ["user", "assistant"]


def test_csv_cell_holding_a_messages_list(tmp_path):
    import pandas as pd

    path = tmp_path / "m.csv"
    pd.DataFrame({"messages": [json.dumps(CHAT)]}).to_csv(path, index=False)
    assert data.load(str(path)).rows == [{"messages": CHAT}]


@pytest.mark.parametrize("header, fmt, mapping", [
    ("question,answer", "prompt_completion", "prompt=question, completion=answer"),
    ("Query,Response", "prompt_completion", "prompt=Query, completion=Response"),
    ("input,output", "prompt_completion", "prompt=input, completion=output"),
    ("prompt,response", "prompt_completion", "prompt=prompt, completion=response"),
    ("user,assistant", "prompt_completion", "prompt=user, completion=assistant"),
    ("instruction,response", "alpaca", "instruction=instruction, output=response"),
    ("instruction,context,response", "alpaca",
     "instruction=instruction, input=context, output=response"),
])
def test_common_column_names_need_no_mapping(tmp_path, header, fmt, mapping):
    path = write(tmp_path, "d.csv", f"{header}\n" + ",".join(["Q", "A", "B"][:header.count(",") + 1])
                 + "\n")
    loaded = data.load(path)
    assert loaded.format == fmt and loaded.mapping_guessed
    assert data.formats.mapping_text(loaded.mapping) == mapping
    assert loaded.rows[0]["messages"][-1]["role"] == "assistant" and loaded.ignored_columns == []


def test_the_report_says_which_mapping_it_chose(tmp_path):
    path = write(tmp_path, "qa.jsonl", jsonl([{"question": "2+2?", "answer": "4", "system_prompt": "Add.",
                                               "id": 1}]))
    summary = data.analyze(path).summary
    assert summary["usable"] and summary["mapping_detected"]
    assert summary["mapping"] == "prompt=question, completion=answer, system=system_prompt"
    assert summary["ignored_columns"] == ["id"]
    assert "mapping:  prompt=question, completion=answer, system=system_prompt (recognised from " \
           "the column names" in data.format_text(summary)
    assert data.load(path).rows[0]["messages"] == [
        {"role": "system", "content": "Add."}, {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"}]
    # Data already in a known format is read as it is; a mapping given by the user wins.
    both = write(tmp_path, "both.jsonl", jsonl([{"text": "t", "question": "q", "answer": "a"}]))
    assert data.load(both).format == "text" and data.load(both).mapping == {}
    given = data.load(path, mapping={"prompt": "answer", "completion": "question"})
    assert not given.mapping_guessed and given.rows[0]["messages"][-1]["content"] == "2+2?"
