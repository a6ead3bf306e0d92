"""`python -m finetune data inspect`: exit 0 for usable data, 2 otherwise; --json output.

Run: python -m pytest -q tests/test_data_cli.py
"""

from __future__ import annotations

import json

from finetune.cli import main


def test_inspect_sample_is_usable(capsys):
    assert main(["data", "inspect", "sample:contacts", "--max-length", "64"]) == 0
    out = capsys.readouterr().out
    assert "format:   messages (detected" in out
    assert "360 read, 360 usable" in out
    assert "rows longer than --max-length 64" in out
    assert "usable:   yes" in out


def test_inspect_json(capsys, tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,output\nA,B\nA,B\nC,\n", encoding="utf-8")
    assert main(["data", "inspect", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "alpaca" and report["usable"] is True
    assert report["rows"]["read"] == 3 and report["rows"]["duplicates"] == 1
    assert report["rows"]["kept"] == 1
    problem, small = report["problems"]
    assert problem["level"] == "warning" and "row 3 (line 4), field 'output'" in problem["message"]
    assert small["level"] == "warning" and "Only 1 rows" in small["message"]  # the guides' rule
    assert [c["name"] for c in report["checks"]][:2] == ["data size", "label balance"]
    assert "counted_with" in report["tokens"]


def test_inspect_unusable_exits_2(capsys, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    assert main(["data", "inspect", str(path)]) == 2
    out = capsys.readouterr().out
    assert "ERROR: bad.jsonl line 2: not valid JSON" in out and "usable:   no" in out
    assert main(["data", "inspect", str(tmp_path / "nope.jsonl"), "--json"]) == 2
    report = json.loads(capsys.readouterr().out)
    assert report["usable"] is False and "does not exist" in report["problems"][0]["message"]


def test_inspect_format_override(capsys, tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "t", "prompt": "p", "completion": "c"}\n', encoding="utf-8")
    assert main(["data", "inspect", str(path), "--format", "text", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "text"
    assert main(["data", "inspect", str(path), "--format", "alpaca"]) == 2
    assert "format 'alpaca' needs the field(s) instruction, output" in capsys.readouterr().out


def test_bench_data_prints_only_its_json(monkeypatch, capsys):
    from finetune.bench import data as bench_data
    from finetune.cli import main

    monkeypatch.setattr(bench_data, "N_ROWS", 300)
    monkeypatch.setattr(bench_data, "N_FILES", 40)
    assert main(["bench", "data", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["data"]
    assert result["rows"] == 300 and result["usable"] and result["seconds"] >= 0
    assert result["cpu"]
    for kind in ("zip", "folder"):
        many = result["many_files"][kind]
        assert many["rows"] == 40 and many["usable"] and many["preview_seconds"] >= 0


def test_inspect_maps_unknown_columns_when_told_how(tmp_path, capsys):
    from finetune.cli import main

    path = tmp_path / "qa.csv"
    path.write_text("frage,antwort\nWhat is 2+2?,4\nCapital of France?,Paris\n", encoding="utf-8")
    assert main(["data", "inspect", str(path)]) == 2
    assert "--map in `data inspect`" in capsys.readouterr().out
    assert main(["data", "inspect", str(path), "--map", "prompt=frage, completion=antwort"]) == 0
    out = capsys.readouterr().out
    assert "prompt_completion" in out and "as given with --map" in out
    # Common names are read without --map, and the output says how.
    path.write_text("question,answer\nWhat is 2+2?,4\n", encoding="utf-8")
    assert main(["data", "inspect", str(path)]) == 0
    assert "mapping:  prompt=question, completion=answer (recognised" in capsys.readouterr().out


def test_export_writes_rows_that_read_back_unchanged(tmp_path, capsys):
    import zipfile

    from finetune import data

    source = tmp_path / "faq.zip"
    with zipfile.ZipFile(source, "w") as zf:
        for i in range(3):
            zf.writestr(f"{i}.json", json.dumps({"question": f"Mail a{i}@b.org?", "answer": f"A{i}",
                                                 "system": "Be brief."}))
        zf.writestr("dup.json", json.dumps({"question": "Mail a0@b.org?", "answer": "A0",
                                            "system": "Be brief."}))
    out = tmp_path / "cleaned.jsonl"
    assert main(["data", "export", str(source), "--out", str(out), "--mask-emails"]) == 0
    assert f"wrote 3 rows to {out}" in capsys.readouterr().out
    exported = [json.loads(line) for line in out.read_text().splitlines()]
    assert exported[0] == {"messages": [{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "Mail [EMAIL]?"},
                                        {"role": "assistant", "content": "A0"}]}
    # What was written reads back as the same rows, and inspect finds nothing to change.
    assert data.load(str(out)).rows == exported
    assert main(["data", "inspect", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    # nothing to change in the rows; only the guides' rule of thumb on 3 rows
    assert report["format"] == "messages"
    assert [p["message"][:11] for p in report["problems"]] == ["Only 3 rows"]
    assert report["rows"]["read"] == report["rows"]["kept"] == 3
    # Data with errors is not exported.
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n', encoding="utf-8")
    assert main(["data", "export", str(bad), "--out", str(tmp_path / "no.jsonl")]) == 2
    assert "1 problem(s) to fix before it can be exported" in capsys.readouterr().err
    assert not (tmp_path / "no.jsonl").exists()
