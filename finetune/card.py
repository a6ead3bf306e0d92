"""The model card of a pushed run (README.md of the Hub repository), built with
`huggingface_hub.ModelCard`: base model, a summary of the data (rows and format, never the rows),
the method and every resolved setting with its reason, base vs tuned vs exported scores, the loss
curve as an image, and how to load each file with transformers, PEFT, llama.cpp and Ollama.

    python -m finetune push runs/NAME --repo NAME --merge --gguf q8_0   # writes it, then uploads

Nothing on this machine leaks into it: local paths become file names, and no token is read here.
"""

from __future__ import annotations

import re
from pathlib import Path

from finetune import runinfo

LOSS_IMAGE = "loss.png"


def data_summary(run_dir: Path, cfg) -> dict:
    """Rows per split and the format, from what the run logged (the data itself is not read)."""
    summary = {"source": public_name(cfg.data), "format": cfg.data_format}
    log = (Path(run_dir) / "train.log")
    text = log.read_text(encoding="utf-8", errors="replace") if log.is_file() else ""
    m = re.search(r"data: (\d+) train, (\d+) validation, (\d+) test rows", text)
    if m:
        summary.update(train=int(m.group(1)), validation=int(m.group(2)), test=int(m.group(3)))
    return summary


def public_name(value: str) -> str:
    """A data or model source as others may read it: a local path becomes its file name."""
    value = str(value or "")
    if not value or value.startswith("sample:"):
        return value
    p = Path(value).expanduser()
    if value.startswith(("/", ".", "~")) or p.exists() or "\\" in value:
        return p.name
    return value  # a Hub id


def loss_image(run_dir: Path, out: Path) -> Path | None:
    """The training and validation loss by step as a PNG; None when the run logged none."""
    loss = runinfo.curves(run_dir)["loss"]
    if not loss:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    for kind, style in (("train", "-"), ("validation", "o-")):
        points = [(s, v) for s, v, k in loss if k == kind]
        if points:
            ax.plot(*zip(*points), style, label=f"{kind} loss", markersize=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(out) / LOSS_IMAGE
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(x) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows])


def evaluation_section(run_dir: Path, manifest: dict) -> str:
    from finetune import evaluate

    report = evaluate.load_report(run_dir)
    if not report:
        return "Not evaluated yet: `python -m finetune eval RUN` scores base and tuned models."
    names = {e["name"] for e in manifest.get("exports", [])}
    report = dict(report, exported={k: v for k, v in report.get("exported", {}).items()
                                    if k in names})
    where = "the run's test split" if str(report["data"]).startswith("test split") \
        else public_name(report["data"])
    text = (f"Greedy answers to {report['n_examples']} held-out rows ({where}), loss on "
            f"{report['n_loss_examples']}. Exact match compares JSON as values; "
            "agreement is the share of answers equal to the tuned model's.\n\n")
    text += _table(evaluate.metric_headers(report, exported=True),
                   evaluate.metric_rows(report, exported=True))
    verdicts = [f"- **{name}**: {verdict}" for name, _, _, _, verdict in
                evaluate.export_rows(report)]
    from finetune import drift, probe, votes

    people = votes.tally(run_dir)
    trust = [f"- {line}" for line in probe.findings(report) + drift.findings(report)
             + ([people["text"]] if people["votes"] else [])]
    return text + ("\n\n" + "\n".join(verdicts) if verdicts else "") + \
        ("\n\nChecks after training (general knowledge the model may have lost, writing "
         "systems the training answers never use, answers that never stopped, people's blind "
         "votes):\n\n" + "\n".join(trust) if trust else "")


def settings_section(run_dir: Path, cfg) -> str:
    from finetune.config import FIELDS

    reasons = runinfo.read_resolved(run_dir)
    rows = []
    for name in FIELDS:
        value = getattr(cfg, name)
        if name in ("model", "data", "val_data", "test_data"):
            value = public_name(value)
        why = reasons.get(name, "")
        if name == "model":  # the reason names the cache folder on this machine
            why = ""
        rows.append([name, "" if value == "" else value, why])
    return _table(["setting", "value", "why"], rows)


def usage_section(repo_id: str, manifest: dict) -> str:
    kinds = {e["kind"] for e in manifest.get("exports", [])}
    ggufs = [e["path"] for e in manifest.get("exports", [])
             if e["kind"] not in ("merged", "adapter")]
    parts = []
    if "merged" in kinds:
        parts.append(f"""### transformers

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}")
messages = [{{"role": "user", "content": "Hello!"}}]
inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)
output = model.generate(**inputs, max_new_tokens=256)  # stops at the end-of-turn token
print(tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```""")
    if "adapter" in kinds:
        sub = "adapter" if "merged" in kinds else ""
        arg = f', subfolder="{sub}"' if sub else ""
        parts.append(f"""### PEFT (the LoRA adapter on its base model)

```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("{repo_id}"{arg})
tokenizer = AutoTokenizer.from_pretrained("{repo_id}"{arg})
model = model.merge_and_unload()  # optional: one model, faster answers
```""")
    if ggufs:
        first = sorted(ggufs, key=lambda f: ("q8_0" not in f, f))[0]
        quant = first.rsplit("-", 1)[-1].removesuffix(".gguf").upper()
        parts.append(f"""### llama.cpp and LM Studio

```bash
llama-cli -hf {repo_id}:{quant}                  # or: llama-cli -m {first} -cnv
```

LM Studio: search for `{repo_id}` and pick a file ({", ".join(f"`{g}`" for g in ggufs)}).

### Ollama

```bash
ollama run hf.co/{repo_id}:{quant}
# or, with the chat template, system prompt and stop token this repository's Modelfile sets:
huggingface-cli download {repo_id} {first} Modelfile --local-dir model && cd model
ollama create my-model -f Modelfile && ollama run my-model
```""")
    return "\n\n".join(parts)


TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

A fine-tune of {{ base_link }} ({{ method }}) made with `finetune` (TRL SFT). {{ summary }}

## Files

{{ files }}

## Evaluation

{{ evaluation }}

## Training

{{ loss }}

Data: {{ data }}

Every setting of the run (those decided automatically say why):

{{ settings }}

## How to use

{{ usage }}
"""


def build_card(run_dir: str | Path, manifest: dict, repo_id: str, out: str | Path | None = None):
    """The ModelCard for a push of `manifest` (an export of the run) to `repo_id`; with `out`,
    the loss image is written there and the card saved as out/README.md."""
    from huggingface_hub import ModelCard, ModelCardData

    run_dir = Path(run_dir)
    cfg = runinfo.load_config(run_dir)
    kinds = {e["kind"] for e in manifest.get("exports", [])}
    ggufs = [e["path"] for e in manifest.get("exports", [])
             if e["kind"] not in ("merged", "adapter")]
    base = public_name(manifest["base_model"])
    on_hub = bool(re.fullmatch(r"[\w.-]+/[\w.-]+", base))  # else a local folder: name it only
    data = data_summary(run_dir, cfg)
    tags = ["finetune", "trl", "sft", cfg.method] + (["gguf"] if ggufs else [])
    card_data = ModelCardData(
        base_model=base if on_hub else None, pipeline_tag="text-generation", tags=tags,
        library_name="transformers" if "merged" in kinds else "peft",
        datasets=[data["source"]] if re.fullmatch(r"[\w.-]+/[\w.-]+", data["source"]) else None)
    files = []
    for e in manifest.get("exports", []):
        where = "the repository root" if e["path"] == "." else f"`{e['path']}`"
        check = e.get("check")
        verdict = check["verdict"] if isinstance(check, dict) else (check or "not checked")
        files.append(f"- **{e['name']}** ({where}): {verdict}")
    if manifest.get("modelfile"):
        files.append(f"- `{manifest['modelfile']}`: an Ollama Modelfile with the chat template, "
                     f"system prompt and stop token ({', '.join(manifest.get('end_of_turn', []))})"
                     " the run trained with")
    rows = ", ".join(f"{data[k]} {k}" for k in ("train", "validation", "test") if k in data)
    data_text = (f"`{data['source']}`, {rows + ' rows' if rows else 'rows not logged'}, format "
                 f"`{data['format']}` (the rows themselves are not published here).")
    image = loss_image(run_dir, Path(out)) if out is not None else None
    status = runinfo.read_status(run_dir)
    card = ModelCard.from_template(
        card_data, template_str=TEMPLATE, title=repo_id.split("/")[-1],
        base_link=f"[{base}](https://huggingface.co/{base})" if on_hub else f"`{base}`",
        method=cfg.method,
        summary=(status.get("end_reason") or "").capitalize() + "." if status.get("end_reason")
        else "", files="\n".join(files), evaluation=evaluation_section(run_dir, manifest),
        loss=f"![Training and validation loss]({LOSS_IMAGE})" if image else "No loss logged.",
        data=data_text, settings=settings_section(run_dir, cfg),
        usage=usage_section(repo_id, manifest))
    if out is not None:
        card.save(Path(out) / "README.md")
    return card
