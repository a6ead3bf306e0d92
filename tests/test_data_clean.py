"""Cleaning counts, masking, the seeded split, prepare() on a RunConfig, token stats and the
rendered example with its loss tokens.

Run: python -m pytest -q tests/test_data_clean.py
"""

from __future__ import annotations

import json

import pytest

from finetune import data
from finetune.config import RunConfig
from finetune.errors import DataError


def chat(q, a):
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}


def write_rows(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return str(path)


def test_duplicates_and_empty_rows_are_counted(tmp_path):
    rows = [chat(f"q{i}", f"a{i}") for i in range(10)] + [chat("q1", "a1"), chat("q2", "a2")]
    rows += [{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": " "}]},
             {"messages": []}]
    summary = data.analyze(write_rows(tmp_path, rows)).summary
    assert summary["rows"] == {"read": 14, "usable": 12, "duplicates": 2, "empty": 2,
                               "skipped": 0, "long_dropped": 0, "kept": 10}
    assert summary["usable"] is True


def test_masking_emails_and_phones():
    text = ("Mail jo.doe+x@mail.example.co.uk or call +44 20 7946 0958 / 555-1485 "
            "before 2026-11-23; order 42.")
    masked, n_email, n_phone = data.mask_text(text)
    assert masked == "Mail [EMAIL] or call [PHONE] / [PHONE] before 2026-11-23; order 42."
    assert (n_email, n_phone) == (1, 2)
    rows, counts = data.mask_rows([chat("x@y.org", "ok"), chat("none", "ok")], phones=False)
    assert rows[0]["messages"][0]["content"] == "[EMAIL]"
    assert counts == {"emails": 1, "phones": 0, "rows": 1}


def test_split_is_seeded_and_reproducible(tmp_path):
    path = write_rows(tmp_path, [chat(f"q{i}", f"a{i}") for i in range(100)])
    cfg = RunConfig(data=path, test_fraction=0.1, seed=3)
    first, again = data.prepare(cfg, 0.2), data.prepare(cfg, 0.2)
    assert (first.train, first.val, first.test) == (again.train, again.val, again.test)
    assert first.report["counts"] == {"train": 70, "val": 20, "test": 10}
    other = data.prepare(cfg.replace(seed=4), 0.2)
    assert other.test != first.test
    # The test split depends only on the seed and its own size, not on the validation share.
    assert data.prepare(cfg, 0.05).test == first.test
    everything = first.train + first.val + first.test
    assert sorted(r["messages"][0]["content"] for r in everything) == \
        sorted(f"q{i}" for i in range(100))


def test_prepare_uses_the_samples_own_test_split():
    splits = data.prepare(RunConfig(data="sample:contacts"), 0.1)
    assert splits.report["counts"] == {"train": 324, "val": 36, "test": 50}
    assert "its own test split" in splits.report["sources"]["test"]


def test_prepare_with_files_removes_leaks_and_never_leaves_train_empty(tmp_path):
    train = write_rows(tmp_path, [chat(f"q{i}", "a") for i in range(20)], "train.jsonl")
    test = write_rows(tmp_path, [chat("q0", "a"), chat("new", "b")], "test.jsonl")
    val = write_rows(tmp_path, [chat("q1", "a")], "val.jsonl")
    splits = data.prepare(RunConfig(data=train, test_data=test, val_data=val), 0.1)
    assert splits.report["counts"] == {"train": 18, "val": 1, "test": 2}
    assert splits.report["cleaning"]["in_val_or_test"] == 2
    one = write_rows(tmp_path, [chat("q0", "a")], "one.jsonl")
    with pytest.raises(DataError, match="No training rows are left"):
        data.prepare(RunConfig(data=one, test_data=test), 0.1)
    tiny = data.prepare(RunConfig(data=write_rows(tmp_path, [chat("q", "a")], "t.jsonl")), 0.5)
    assert tiny.report["counts"] == {"train": 1, "val": 0, "test": 0}


def test_token_counts_match_the_chat_template(tiny_model):
    rows = data.load("sample:rewrite").rows[:40] + [{"text": "plain words here"}]
    from finetune import models

    counter = data.TokenCounter(tiny_model)
    tok = models.load_tokenizer(models.resolve(str(tiny_model)))
    exact = [len(tok.apply_chat_template(r["messages"], tokenize=True, return_dict=True)["input_ids"])
             for r in rows[:-1]]
    exact.append(len(tok(rows[-1]["text"], add_special_tokens=False)["input_ids"]) + 1)
    assert counter.lengths(rows) == exact and counter.exact
    estimate = data.TokenCounter(None)
    assert not estimate.exact and "estimate" in estimate.description
    assert all(n > 0 for n in estimate.lengths(rows))


def test_large_files_are_sampled_but_exact_near_the_cut(tiny_model, monkeypatch):
    from finetune.data import tokens

    monkeypatch.setattr(tokens, "EXACT_ROWS", 10)
    monkeypatch.setattr(tokens, "SAMPLE_ROWS", 5)
    short = data.load("sample:tickets").rows[:50]
    long = [{"messages": [dict(m, content=m["content"] * 8) for m in r["messages"]]}
            for r in data.load("sample:contacts").rows[:10]]
    rows = short + long
    exact = data.TokenCounter(tiny_model).lengths(rows)
    cut = (max(exact[:50]) + min(exact[50:])) // 2  # between the short and the long rows
    counter = data.TokenCounter(tiny_model)
    sampled = counter.lengths(rows, max_length=cut)
    assert counter.estimated_rows > 0 and "estimated" in counter.note
    assert sum(n > cut for n in sampled) == sum(n > cut for n in exact) == 10
    # The rows closest to the cut are the ones counted exactly.
    closest = sorted(range(len(rows)), key=lambda i: abs(sampled[i] - cut))[:3]
    assert all(sampled[i] == exact[i] for i in closest)


def test_histogram_marks_the_cut_off():
    frame = data.histogram([10, 20, 30, 40, 50, 60, 200], max_length=40, bins=4)
    fits = frame[frame["part"] == data.FITS]
    over = frame[frame["part"] == data.TRUNCATED]
    assert fits["rows"].sum() == 4 and over["rows"].sum() == 3
    assert fits["tokens"].iloc[-1].endswith("-40")  # the cut-off is a bin edge
    assert over["tokens"].iloc[-1].endswith("+")  # the long tail folded into the last bin
    # The plot sorts labels as text: text order must be bin order (88-89 before 100-101).
    labels = list(data.histogram([88, 95, 100, 130, 1000], max_length=120)["tokens"])
    assert labels == sorted(labels) and labels[0].strip().startswith("8")
    assert data.length_stats([5, 1, 9], 4) == {"min": 1, "median": 5, "p95": 9, "max": 9,
                                               "mean": 5.0, "total": 15, "max_length": 4,
                                               "longer": 2}


def test_rendered_example_marks_the_completion(tiny_model):
    from finetune import models

    tok = models.load_tokenizer(models.resolve(str(tiny_model)))
    counter = data.TokenCounter(tiny_model)
    row = {"messages": [{"role": "system", "content": "Be brief."},
                        {"role": "user", "content": "Capital of France?"},
                        {"role": "assistant", "content": "Paris."}]}
    shown = counter.render(row)
    context, loss = shown["spans"]
    assert context[1] is None and context[0].endswith("<|im_start|>assistant\n")
    assert loss == ("Paris.<|im_end|>\n", "loss")
    assert shown["loss_tokens"] == len(tok("Paris.<|im_end|>\n", add_special_tokens=False)["input_ids"])
    # The same split as the transformers tokenizer makes of the chat template's output.
    full = tok.apply_chat_template(row["messages"], tokenize=True, return_dict=True)["input_ids"]
    assert shown["tokens"] == len(full)
    # A transformers tokenizer wrapped in the counter renders the same.
    assert data.TokenCounter.from_tokenizer(tok).render(row) == shown
    cut = counter.render(row, max_length=shown["tokens"] - 2)
    assert cut["spans"][-1][1] == "cut" and cut["truncated"] == 2
    rough = data.TokenCounter(None).render(row)
    assert rough["spans"][-1] == ("Paris.<|im_end|>\n", "loss") and not rough["exact"]
    rough_cut = data.TokenCounter(None).render(row, max_length=10)
    assert rough_cut["spans"][-1][1] == "cut" and rough_cut["truncated"] > 0
