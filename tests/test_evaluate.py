"""Evaluation of a finished run, base vs tuned, on the tiny model.

    python -m pytest tests/test_evaluate.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import SAMPLES

N_ROWS = 6


def use_plain_data_and_cpu(monkeypatch) -> None:
    """fp32 on the CPU (no precision probe); JSONL readers if finetune.data is not there yet."""
    from finetune import hardware

    monkeypatch.setattr(hardware, "inference_settings", lambda: ("cpu", "fp32"))
    import finetune.data as data

    if not hasattr(data, "load"):
        class Loaded:
            def __init__(self, rows):
                self.rows = rows

        def read(path):
            return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]

        class Splits:
            def __init__(self, test):
                self.train, self.val, self.test, self.report = [], [], test, {}

        monkeypatch.setattr(data, "load", lambda source, fmt="auto", **k: Loaded(read(source)),
                            raising=False)
        monkeypatch.setattr(data, "prepare", lambda cfg, vf: Splits(read(cfg.test_data)),
                            raising=False)


@pytest.fixture(autouse=True)
def plain_cpu(monkeypatch):
    """fp32 on one CPU thread: for models this small, a second thread only adds waiting (up to
    20x slower on a busy 2-core machine)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_run(root: Path, model: Path, rows: int = N_ROWS, method: str = "lora") -> Path:
    """A finished LoRA run on `model` whose test split is `rows` contacts rows. The adapter has
    random weights (training even a tiny model costs more time than these tests may take), so
    the tuned model differs from the base one without being better."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune import runinfo
    from finetune.config import RunConfig

    run = root / "runs" / "tiny-run"
    run.mkdir(parents=True)
    test = root / "test.jsonl"
    test.write_text("\n".join((SAMPLES / "contacts" / "test.jsonl").read_text()
                              .splitlines()[:rows]) + "\n")
    train = root / "train.jsonl"
    train.write_text("\n".join((SAMPLES / "contacts" / "train.jsonl").read_text()
                               .splitlines()[:24]) + "\n")
    RunConfig(model=str(model), data=str(train), test_data=str(test), val_fraction=0.0,
              name="tiny-run", method=method).save(run / "config.yaml")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    lora = LoraConfig(r=8, lora_alpha=64, target_modules="all-linear", init_lora_weights=False,
                      task_type="CAUSAL_LM")
    get_peft_model(base, lora).save_pretrained(run / "adapter")
    runinfo.update_status(run, state="completed")
    return run


@pytest.fixture(scope="module")
def trained_run(tiny_model, tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("evalrun"), tiny_model)


def test_evaluate_run_compares_base_and_tuned(trained_run):
    from finetune import evaluate

    seen = []
    report = evaluate.evaluate_run(trained_run, progress=lambda f, d: seen.append((f, d)),
                                   log=lambda *a: None)

    saved = json.loads((trained_run / "eval.json").read_text())
    assert saved["n_examples"] == N_ROWS and saved["n_loss_examples"] == N_ROWS
    assert saved["metrics"] == json.loads(json.dumps(report["metrics"]))
    for kind in ("base", "tuned"):
        m = saved["metrics"][kind]
        assert set(m) >= {"exact_match", "rouge_l", "bleu", "json_valid", "loss", "perplexity"}
        assert m["perplexity"] == pytest.approx(2.718281828 ** m["loss"], rel=1e-6)
    # the tuned model is the base one with the adapter merged: it scores and answers differently
    assert saved["metrics"]["tuned"]["loss"] != pytest.approx(saved["metrics"]["base"]["loss"])
    assert any(e["base"] != e["tuned"] for e in saved["examples"])

    ex = saved["examples"]
    assert len(ex) == N_ROWS
    assert set(ex[0]) == {"prompt", "reference", "base", "tuned", "base_correct", "tuned_correct"}
    first = json.loads((SAMPLES / "contacts" / "test.jsonl").read_text().splitlines()[0])
    assert ex[0]["prompt"] == first["messages"][1]["content"]  # the user's, not the system's
    assert ex[0]["reference"] == first["messages"][2]["content"]
    assert saved["created"] and saved["seconds"] >= 0
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert any("tuned" in d for _, d in seen)

    # writing systems and answers that never stopped, against the 24 training answers
    drift = saved["drift"]
    assert drift["training"]["answers"] == 24 and "Latin" in drift["training"]["scripts"]
    assert set(drift["models"]) == {"base", "tuned"}
    assert drift["max_new_tokens"] == saved["max_new_tokens"]

    # the forgetting probe: the shipped questions, answered by both models
    from finetune import probe

    n_probe = len(probe.questions())
    assert saved["probe"]["questions"] == n_probe and len(saved["probe"]["items"]) == n_probe
    for kind in ("base", "tuned"):
        assert saved["metrics"][kind]["probe"] == saved["probe"]["models"][kind]["score"]
    assert saved["probe"]["drop"] == pytest.approx(saved["metrics"]["base"]["probe"]
                                                   - saved["metrics"]["tuned"]["probe"])

    # the views the CLI and the Evaluate tab show
    text = evaluate.format_report(saved)
    assert "Trust:" in text and f"General knowledge (the probe's {n_probe} questions)" in text
    assert "general knowledge (probe)" in text
    assert "exact match" in text and "valid JSON" in text and "perplexity" in text
    rows = evaluate.metric_rows(saved)
    assert rows[0][0] == "exact match" and len(rows[0]) == 4
    both_wrong = evaluate.example_rows(saved, "both wrong")
    everything = evaluate.example_rows(saved, "all")
    assert len(everything) == N_ROWS
    assert all(r[4] == "✗" and r[5] == "✗" for r in both_wrong)


def test_limit_and_other_data(trained_run, tmp_path):
    from finetune import evaluate

    other = tmp_path / "other.jsonl"
    rows = (SAMPLES / "tickets" / "test.jsonl").read_text().splitlines()[:3]
    other.write_text("\n".join(rows) + "\n")
    report = evaluate.evaluate_run(trained_run, data=str(other), limit=2, log=lambda *a: None)
    assert report["n_examples"] == 2 and report["n_loss_examples"] == 3
    assert report["data"] == str(other)
    assert "json_valid" not in report["metrics"]["base"]  # labels are not JSON


def test_unfinished_run_is_refused_before_loading(tiny_model, tmp_path):
    from finetune import evaluate
    from finetune.config import RunConfig
    from finetune.errors import RunError

    run = tmp_path / "runs" / "busy"
    run.mkdir(parents=True)
    RunConfig(model=str(tiny_model)).save(run / "config.yaml")
    with pytest.raises(RunError, match="no trained model yet"):
        evaluate.evaluate_run(run, log=lambda *a: None)


def test_evaluation_on_a_gpu_busy_training_says_so_before_loading(trained_run, monkeypatch):
    from finetune import evaluate, hardware, jobs
    from finetune.errors import DeviceMemoryError

    monkeypatch.setattr(hardware, "inference_settings", lambda: ("cuda", "bf16"))
    monkeypatch.setattr(hardware, "free_memory_gb", lambda: 0.2)
    monkeypatch.setattr(jobs, "training_run_name", lambda: "big-full")
    with pytest.raises(DeviceMemoryError, match=r"GPU is busy training run big-full: 0.2 GB free, "
                                                r"evaluating the base model needs ~"):
        evaluate.evaluate_run(trained_run, log=lambda *a: None)


def test_cli_eval_json(trained_run, capsys):
    from finetune import cli

    assert cli.main(["eval", str(trained_run), "--limit", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["n_examples"] == 2
    assert set(out["metrics"]) == {"base", "tuned"}

    assert cli.main(["eval", str(trained_run), "--limit", "0"]) == 2  # a message, no traceback
    assert "limit must be at least 1" in capsys.readouterr().err


def test_evaluate_tab_shows_saved_report_and_filters(trained_run, monkeypatch):
    import gradio as gr

    from finetune.ui import evaluate_tab

    monkeypatch.setenv("FINETUNE_HOME", str(trained_run.parent.parent))  # the page names runs

    calls = []
    summary, metrics, example_rows, _ = evaluate_tab.run_evaluation(
        trained_run.name, evaluate_tab.OWN_SPLIT, None, 3, "all",
        progress=lambda f, desc=None: calls.append(f))
    metric_rows = metrics.value["data"]
    assert "3" in summary and calls and metric_rows[0][0] == "exact match"
    assert "**Trust:** General knowledge (the probe's" in summary  # base and tuned on the probe
    assert any(row[0] == "general knowledge (probe)" for row in metric_rows)
    assert len(example_rows) == 3 and example_rows[0][4] in ("✓", "✗")

    # picking the run again shows the saved evaluation without recomputing
    again = evaluate_tab.show_saved(trained_run.name, "all")
    assert again[1].value["data"] == metric_rows and again[2] == example_rows
    assert evaluate_tab.filter_examples(trained_run.name, "both right") == \
        [r for r in example_rows if r[4] == "✓" and r[5] == "✓"]
    with pytest.raises(gr.Error, match="Upload a test file"):
        evaluate_tab.run_evaluation(trained_run.name, evaluate_tab.A_FILE, None, None, "all",
                                    progress=lambda *a, **k: None)
    with pytest.raises(gr.Error, match="Pick a finished run"):
        evaluate_tab.run_evaluation(None, evaluate_tab.OWN_SPLIT, None, None, "all",
                                    progress=lambda *a, **k: None)
    with pytest.raises(gr.Error, match="limit must be at least 1"):
        evaluate_tab.run_evaluation(trained_run.name, evaluate_tab.OWN_SPLIT, None, 0, "all",
                                    progress=lambda *a, **k: None)
    # the tab builds inside a gr.Tab and offers only finished runs
    with gr.Blocks(), gr.Tab("Evaluate"):
        evaluate_tab.build_evaluate_tab()
    assert evaluate_tab.show_saved(None, "all")[0] == evaluate_tab.NO_RUN
