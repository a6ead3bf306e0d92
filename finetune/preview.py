"""What the Data tab shows for one source, decided where training decides it: the rows after
cleaning, their token lengths counted with the tokenizer of the model the Train tab has, the max
length the planner's 'auto' will choose for that model, the split the run will use, and what the
Train tab gets.

    python app.py        # the Data tab calls data_view() for every source it shows
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from finetune import data, models, paths, plan
from finetune.config import DEFAULT_MODEL, RunConfig
from finetune.errors import DataError


@dataclass
class DataView:
    analysis: data.Analysis  # rows after cleaning, their lengths, the summary for people
    counter: data.TokenCounter  # renders one row as the model sees it
    max_length: int | None  # the cut shown: the user's, or the planner's auto cut
    cut_reason: str  # why the auto cut; '' when the user set the max length
    split_report: dict | None  # train/validation/test counts as the run will split them
    train_source: dict | None  # what the Train tab gets: data, data_format[, test_data, max_length]


def data_view(source: str, fmt: str = "auto", mapping_text: str = "", mask_emails: bool = False,
              mask_phones: bool = False, drop_long: bool = False, max_length: int | None = None,
              model: str = DEFAULT_MODEL) -> DataView:
    """Everything the Data tab shows for `source`; DataError when it cannot be read at all."""
    files = models.model_files(model or DEFAULT_MODEL)
    counter = data.TokenCounter(files)
    context = models.context_length(files)
    chosen: dict[str, str] = {}

    def auto_cut(lengths: list[int]) -> int:
        cut, chosen["why"] = plan.length_cut(lengths, context, counter.estimated_rows)
        return cut

    mapping = data.parse_mapping(mapping_text) if mapping_text else None
    analysis = data.analyze(source, fmt, mapping=mapping, max_length=max_length,
                            mask_emails=mask_emails, mask_phones=mask_phones,
                            drop_long=drop_long, counter=counter,
                            choose_cut=None if max_length else auto_cut)
    summary = analysis.summary
    shown_cut = summary["tokens"].get("max_length", max_length)
    train_source = report = None
    if summary["usable"]:
        changed = bool((summary["masked"] or {}).get("rows") or summary["rows"]["long_dropped"])
        train_source = training_source(source, analysis, bool(mapping), changed)
        if max_length:
            train_source["max_length"] = int(max_length)
        report = split_report(analysis, train_source)
    return DataView(analysis, counter, shown_cut, chosen.get("why", ""), report, train_source)


def training_source(source: str, analysis: data.Analysis, mapped: bool, changed: bool) -> dict:
    """What the Train tab gets: the source itself when training can read it as it is, otherwise
    the rows shown here written to $FINETUNE_HOME/uploads/NAME-prepared.jsonl."""
    if not (mapped or changed):
        return {"data": source, "data_format": analysis.summary["format"]}
    path = data.write_jsonl(analysis.rows, uploads_dir() / f"{_stem(source)}-prepared.jsonl")
    normalized = "text" if analysis.rows and "text" in analysis.rows[0] else "messages"
    state = {"data": str(path), "data_format": normalized}
    if source.startswith("sample:"):
        state["test_data"] = str(data.sample_path(source, "test"))
    return state


def split_report(analysis: data.Analysis, train_source: dict) -> dict:
    """The split a run on this data will make: the test split first, then the validation share
    'auto' gives the rows that are left."""
    cfg = RunConfig(data=train_source["data"], data_format=train_source["data_format"],
                    test_data=train_source.get("test_data", ""))
    cleaned = dataclasses.replace(analysis.loaded, rows=analysis.rows, problems=[])
    n_rows = len(data.split(cleaned, cfg, 0.0).train)  # training + validation rows
    return data.split(cleaned, cfg, plan.auto_val_fraction(n_rows)).report


def uploads_dir() -> Path:
    return paths.home() / "uploads"


def browser_source(text: str | None, role: str = "data") -> str:
    """A data source as the page may name it: a bundled sample, a file in the uploads folder (or
    a bundled sample's own file), or a Hub dataset id; never another path on the server (the CLI
    takes any path: its user owns the machine). DataError otherwise."""
    from finetune.data.readers import SAMPLES_DIR, is_hub_id

    text = (text or "").strip()
    if text.startswith("sample:") or (text and is_hub_id(text)):
        return text
    path = Path(text).expanduser()
    if text and path.is_absolute():
        resolved = path.resolve()
        if any(resolved.is_relative_to(root.resolve()) for root in (uploads_dir(), SAMPLES_DIR)):
            return text
    raise DataError(f"The {role} '{text}' is not something the page can read: upload a file, "
                    "pick a bundled sample, or name a Hub dataset (owner/name).")


def check_browser_sources(cfg: RunConfig) -> RunConfig:
    """A run started from the page reads only what the page may name (browser_source)."""
    browser_source(cfg.data, "training data")
    for role, value in (("validation file", cfg.val_data), ("test file", cfg.test_data),
                        ("general data to mix in", cfg.mix_data)):
        if value:
            browser_source(value, role)
    return cfg


def keep_upload(temp_paths: str | list[str]) -> str:
    """Copy an upload (temp files that go away) to $FINETUNE_HOME/uploads/: one file as itself
    (the same content uploaded twice is kept once), several files into one folder named by
    their content, which is then read as one dataset (finetune.data.archives)."""
    paths = [temp_paths] if isinstance(temp_paths, (str, Path)) else list(temp_paths or [])
    if not paths:
        raise DataError("Nothing was uploaded: choose a file, several files, or an archive.")
    if len(paths) == 1:
        return _keep_file(Path(paths[0]), uploads_dir())
    digest = hashlib.sha1()
    for path in sorted(map(Path, paths), key=lambda p: p.name):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    folder = uploads_dir() / f"{len(paths)}-files-{digest.hexdigest()[:10]}"
    for path in paths:
        _keep_file(Path(path), folder)
    return str(folder)


def _keep_file(src: Path, target_dir: Path) -> str:
    target_dir.mkdir(parents=True, exist_ok=True)
    target = target_dir / src.name
    n = 1
    while target.exists() and target.read_bytes() != src.read_bytes():
        target = target_dir / f"{src.stem}-{n}{src.suffix}"
        n += 1
    shutil.copyfile(src, target)
    return str(target)


def cleaned_file(rows: list[dict], source: str, usable: bool = True) -> str:
    """The rows the Data tab shows (normalized and cleaned) as a JSONL file to download, in a
    temporary folder (the page serves files from there); what `data export` writes."""
    if not rows or not usable:
        raise DataError("There is nothing usable to download: "
                        + ("fix the errors listed under Problems first." if rows else
                           "load data that can be used first."))
    folder = Path(tempfile.mkdtemp(prefix="finetune-cleaned-"))
    return str(data.write_jsonl(rows, folder / f"{_stem(source)}-cleaned.jsonl"))


def _stem(source: str) -> str:
    """A file name made from a source: sample:contacts -> contacts, chats.tar.gz -> chats."""
    name = Path(source.removeprefix("sample:")).name
    for suffix in sorted(data.ARCHIVE_TYPES + data.FILE_TYPES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            name = name[:-len(suffix)]
            break
    return re.sub(r"[^\w.-]+", "_", name) or "data"
