"""The command line: `python -m finetune <command>`; each command is one library call.

    python -m finetune train --preset demo          # bundled model + bundled data, ~5 min on 2 cores
    python -m finetune train --data my.jsonl        # every setting resolved from the data and machine
    python -m finetune train runs/NAME/config.yaml  # repeat a run exactly
    python -m finetune train CONFIG.yaml --num-processes 4 --strategy fsdp   # 4 GPUs (accelerate)
    python -m finetune train CONFIG.yaml --num-machines 2 --num-processes 16 --main-process-ip HOST --slurm
    python -m finetune eval runs/NAME --json
    python -m finetune chat runs/NAME --prompt "..."
    python -m finetune data inspect my.jsonl
    python -m finetune data export my_files.zip --out cleaned.jsonl
    python -m finetune runs | status RUN | stop RUN | resume RUN
    python -m finetune export RUN --merge --gguf q8_0 --out DIR   # each export checked
    python -m finetune push RUN --repo NAME --merge [--space NAME-chat]   # needs HF_TOKEN
"""

from __future__ import annotations

import argparse
import json
import sys

from finetune.errors import FinetuneError

MAP_HELP = ("which columns hold what, for names not understood on their own (question/answer "
            "and the like are), e.g. 'prompt=ticket, completion=category'")


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    from finetune import config

    g = p.add_argument_group("settings (each overrides the config file; 'auto' lets the tool decide)")
    for name, f in config.FIELDS.items():
        meta = f.metadata
        extra = f" One of: {', '.join(meta['choices'])}." if "choices" in meta else ""
        g.add_argument("--" + name.replace("_", "-"), dest="cfg_" + name, default=None,
                       metavar=name.upper() if f.type != "bool" else "BOOL",
                       help=f"{meta['help']}{extra} Default: {f.default!r}.".replace("%", "%%"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m finetune", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train a model (in this terminal; Ctrl-C stops and saves)")
    t.add_argument("config", nargs="?", help="a YAML config, e.g. runs/NAME/config.yaml")
    t.add_argument("--preset", help="start from a preset: " + ", ".join(_preset_names()))
    t.add_argument("--dry-run", action="store_true",
                   help="resolve and print every setting with its reason, then stop")
    t.add_argument("--slurm", action="store_true",
                   help="prepare the run and write a Slurm batch script for it (RUN/run.slurm: "
                        "one launcher per node) instead of training here")
    _add_config_flags(t)

    e = sub.add_parser("eval", help="base vs tuned on the held-out split: exact match, loss, ...")
    e.add_argument("run", help="run directory or name")
    e.add_argument("--data", help="evaluate on this file instead of the run's test split")
    e.add_argument("--limit", type=int, help="at most this many examples for generation metrics")
    e.add_argument("--json", action="store_true", help="print the report as JSON")

    c = sub.add_parser("chat", help="one answer from a run's tuned model or any model")
    c.add_argument("target", help="run directory/name, or a model (bundled name, directory, Hub id)")
    c.add_argument("--prompt", required=True)
    c.add_argument("--system", default="", help="system prompt")
    c.add_argument("--base", action="store_true", help="answer with the run's base model instead")
    _add_generation_flags(c)

    d = sub.add_parser("data", help="inspect data before training")
    dsub = d.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    di = dsub.add_parser("inspect", help="detected format, counts, problems; exit 2 if unusable")
    di.add_argument("path", help="file, folder, archive (.zip, .tar, .tar.gz), sample:NAME, or "
                    "Hub dataset id")
    di.add_argument("--format", default="auto", help="override the detected format")
    di.add_argument("--max-length", type=int, help="count rows longer than this many tokens")
    di.add_argument("--map", default="", metavar="MAPPING", help=MAP_HELP)
    di.add_argument("--json", action="store_true")
    de = dsub.add_parser("export", help="write the normalized, cleaned rows as one JSONL file "
                         "(what the Data tab's 'Download as JSONL' gives)")
    de.add_argument("path", help="file, folder, archive, sample:NAME, or Hub dataset id")
    de.add_argument("--out", required=True, metavar="FILE.jsonl", help="the JSONL file to write")
    de.add_argument("--format", default="auto", help="override the detected format")
    de.add_argument("--map", default="", metavar="MAPPING", help=MAP_HELP)
    de.add_argument("--mask-emails", action="store_true", help="replace e-mail addresses by [EMAIL]")
    de.add_argument("--mask-phones", action="store_true", help="replace phone numbers by [PHONE]")
    de.add_argument("--max-length", type=int, help="with --drop-long: the most tokens a row may have")
    de.add_argument("--drop-long", action="store_true", help="leave out rows longer than --max-length")

    sub.add_parser("runs", help="list runs with model, method, data, status, losses")
    for name, helptext in (("status", "show a run's state and latest metrics"),
                           ("stop", "stop a running run (saves the latest adapter)"),
                           ("resume", "resume a stopped or interrupted run from its checkpoint")):
        s = sub.add_parser(name, help=helptext)
        s.add_argument("run", help="run directory or name")
        if name == "resume":
            s.add_argument("--foreground", action="store_true",
                           help="train in this terminal instead of in the background")

    m = sub.add_parser("models", help="where a model comes from (prepares the bundled one)")
    m.add_argument("model", nargs="?", default=_default_model())

    x = sub.add_parser("export", help="export a finished run (adapter, merged model, GGUF), "
                       "each checked on the held-out rows")
    x.add_argument("run", help="run directory or name")
    x.add_argument("--out", required=True, help="folder to write (laid out as a Hub repository)")
    _add_export_flags(x)

    u = sub.add_parser("push", help="push a run's exports to the Hugging Face Hub with a model "
                       "card (private; token from HF_TOKEN)")
    u.add_argument("run", help="run directory or name")
    u.add_argument("--repo", required=True, help="NAME (under your account) or OWNER/NAME")
    u.add_argument("--from", dest="folder", metavar="DIR",
                   help="push this earlier export of the run instead of exporting again")
    u.add_argument("--public", action="store_true", help="make the repository public")
    u.add_argument("--force", action="store_true", help="push even if a check flagged an export")
    u.add_argument("--space", metavar="SPACE", help="also publish a chat-only Space for the "
                   "model (NAME or OWNER/NAME; public unless --private-space)")
    u.add_argument("--private-space", action="store_true", help="make the chat Space private")
    _add_export_flags(u)

    from finetune.bench.shapes import SHAPES

    b = sub.add_parser("bench", help="measure speed on this machine (chat, data, train)")
    b.add_argument("what", nargs="*", default=[], help="hardware, data, chat, train (the default: all four), defaults (~2 h on 2 CPU cores)")
    b.add_argument("--json", action="store_true")
    b.add_argument("--model", help="train, chat: the model (default: the bundled one)")
    b.add_argument("--data", help="train: the data (default: sample:contacts)")
    b.add_argument("--steps", type=int, help="train: optimizer steps per side (default: 12)")
    b.add_argument("--rounds", type=int, help="train: baseline/ours pairs, run alternately "
                   "(default: 1)")
    b.add_argument("--shape", choices=list(SHAPES), help="train: a random-init "
                   "model of that size instead of --model (made once; for a GPU)")
    b.add_argument("--seq-len", type=int, help="train: rows of about this many tokens (the "
                   "samples' turns in long chats) instead of --data, and max length the same")
    b.add_argument("--method", help="train: lora, qlora or full (default: lora)")
    b.add_argument("--liger", action="store_true", default=None, help="train, on an NVIDIA "
                   "GPU: ours without and with Liger's kernels; 'auto' then follows the result")
    b.add_argument("--tasks", default="", help="defaults only: comma-separated tasks (default: "
                   "sample:contacts,sample:tickets,sample:rewrite,dates,receipts)")
    b.add_argument("--setups", default="", help="defaults only: comma-separated setups "
                   "(default: auto,hand-tuned,llama-factory)")
    return p


def _default_model() -> str:
    from finetune.config import DEFAULT_MODEL

    return DEFAULT_MODEL


def _preset_names() -> list[str]:
    from finetune import presets

    return list(presets.PRESETS)


def _config_from_args(args) -> "object":
    from finetune import config, presets

    data: dict = {}
    if args.preset:
        data.update(presets.get(args.preset))
    if args.config:
        data.update(config.load(args.config).to_dict())
    for name in config.FIELDS:
        value = getattr(args, "cfg_" + name)
        if value is not None:
            data[name] = value
    return config.from_dict(data, source="command line")


def cmd_train(args) -> int:
    from pathlib import Path

    from finetune import jobs, launch, plan, runinfo, train

    cfg = _config_from_args(args)
    if args.dry_run:
        planned = plan.plan(cfg)
        for name, reason in planned.reasons.items():
            print(f"{name:24s} {getattr(planned.config, name, '')!s:>12}  {reason}")
        return 0
    run_dir = jobs.prepare_run(cfg).run_dir
    resolved = runinfo.load_config(run_dir)
    if args.slurm:
        script = launch.write_slurm(run_dir, resolved, Path.cwd())
        print(f"{run_dir}\nstart it with: sbatch {script}")
        return 0
    if resolved.num_machines > 1:
        print(f"{run_dir}\nstart it with one command on each machine (the run directory must be "
              "on storage they all see):")
        for rank, command in enumerate(launch.node_commands(run_dir, resolved)):
            print(f"  machine {rank}: {command}")
        return 0
    if launch.distributed(resolved):
        jobs.start(run_dir)
        status = _follow(run_dir)
    else:
        status = train.run(run_dir)
    print(f"{status.get('state')}: {status.get('end_reason', '')}".rstrip(": "))
    print(run_dir)
    return 0 if status.get("state") in ("completed", "stopped") else 1


def _follow(run_dir) -> dict:
    """Show a background run's log here until it ends; Ctrl-C stops it (every process)."""
    from finetune import jobs

    try:
        for text in jobs.follow(run_dir):
            print(text, end="", flush=True)
    except KeyboardInterrupt:
        print("\nstopping every process of the run ...", file=sys.stderr, flush=True)
        jobs.stop(run_dir)
    return jobs.status(run_dir)


def cmd_eval(args) -> int:
    from finetune import evaluate, runinfo

    report = evaluate.evaluate_run(runinfo.run_path(args.run), data=args.data, limit=args.limit,
                                   log=(lambda *a, **k: print(*a, file=sys.stderr, **k)))
    print(json.dumps(report, indent=2) if args.json else evaluate.format_report(report))
    return 0


def _add_generation_flags(p: argparse.ArgumentParser) -> None:
    from finetune.config import GENERATION_FIELDS, GenerationSettings

    g = p.add_argument_group("generation settings")
    defaults = GenerationSettings()
    for name, f in GENERATION_FIELDS.items():
        meta = f.metadata
        many = meta["type"] is list  # --stop A --stop B
        limits = "" if many else f" From {meta['min']} to {meta['max']}."
        g.add_argument("--" + name.replace("_", "-"), dest="gen_" + name, default=None,
                       action="append" if many else "store", metavar=name.upper(),
                       help=f"{meta['help']}{limits}{' Repeatable.' if many else ''} Default: "
                            f"{getattr(defaults, name)!r}.".replace("%", "%%"))


def cmd_chat(args) -> int:
    from finetune import chat
    from finetune.config import GENERATION_FIELDS, GenerationSettings

    given = {n: getattr(args, "gen_" + n) for n in GENERATION_FIELDS
             if getattr(args, "gen_" + n) is not None}
    settings = GenerationSettings.from_dict(given, source="command line")
    for piece in chat.answer_once(args.target, args.prompt, args.system, settings, base=args.base):
        print(piece, end="", flush=True)
    print()
    return 0


def cmd_data(args) -> int:
    from finetune import data

    if args.data_command == "export":
        summary = data.export(args.path, args.out, fmt=args.format, column_map=args.map,
                              mask_emails=args.mask_emails, mask_phones=args.mask_phones,
                              max_length=args.max_length, drop_long=args.drop_long)
        _err(data.format_text(summary))
        print(f"wrote {summary['rows']['kept']} rows to {summary['written']} (read as "
              f"{summary['format']}; each row is now {{\"messages\": [...]}} or {{\"text\": ...}})")
        return 0
    summary = data.inspect_summary(args.path, fmt=args.format, max_length=args.max_length,
                                   column_map=args.map)
    print(json.dumps(summary, indent=2, ensure_ascii=False) if args.json
          else data.format_text(summary))
    return 0 if summary["usable"] else 2


def cmd_runs(args) -> int:
    from finetune import jobs

    print(jobs.format_runs_table(jobs.runs_table()))
    return 0


def cmd_status(args) -> int:
    from finetune import jobs, runinfo

    print(json.dumps(jobs.status(runinfo.run_path(args.run)), indent=2))
    return 0


def cmd_stop(args) -> int:
    from finetune import jobs, runinfo

    status = jobs.stop(runinfo.run_path(args.run))
    print(f"{status.get('state')}: {status.get('end_reason', '')}")
    return 0


def cmd_resume(args) -> int:
    from finetune import jobs, launch, runinfo, train

    run_dir = runinfo.run_path(args.run)
    if args.foreground and launch.distributed(runinfo.load_config(run_dir)):
        jobs.resume(run_dir)  # several processes: in the background, shown here
        status = _follow(run_dir)
        print(f"{status.get('state')}: {status.get('end_reason', '')}")
        return 0 if status.get("state") in ("completed", "stopped") else 1
    if args.foreground:
        jobs.check_resumable(run_dir)
        status = train.run(run_dir, resume=True)
        print(f"{status.get('state')}: {status.get('end_reason', '')}")
        return 0 if status.get("state") in ("completed", "stopped") else 1
    jobs.resume(run_dir)
    print(f"resumed in the background; follow with: python -m finetune status {run_dir}")
    return 0


def _add_export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--merge", action="store_true",
                   help="the merged model: safetensors, tokenizer, chat template, a generation "
                        "config that stops at the end-of-turn token")
    p.add_argument("--adapter", action="store_true", default=None,
                   help="the LoRA adapter (the default when neither --merge nor --gguf is given)")
    p.add_argument("--gguf", action="append", default=[], metavar="TYPE",
                   help="GGUF for llama.cpp, Ollama, LM Studio, with an Ollama Modelfile: q8_0, "
                        "f16, bf16 or f32; repeatable")
    p.add_argument("--no-check", dest="check", action="store_false",
                   help="skip answering the held-out rows with each export (not recommended)")
    p.add_argument("--limit", type=int, help="check on at most this many held-out rows")


def _progress_printer(every_s: float = 5.0):
    """progress(fraction, text) for long steps: a line on stderr when a new step starts, and
    every few seconds while one runs."""
    import time

    last = [None, 0.0]

    def show(fraction: float, desc: str) -> None:
        step, now = desc.split(":")[0], time.monotonic()
        if step != last[0] or now - last[1] >= every_s or fraction >= 1.0:
            last[:] = [step, now]
            print(f"[{100 * fraction:3.0f}%] {desc}", file=sys.stderr, flush=True)

    return show


def _err(*a, **k) -> None:
    print(*a, file=sys.stderr, **k)


def cmd_export(args) -> int:
    from finetune import export, runinfo

    manifest = export.export_run(runinfo.run_path(args.run), args.out, adapter=args.adapter,
                                 merge=args.merge, gguf_types=args.gguf, check=args.check,
                                 limit=args.limit, progress=_progress_printer(), log=_err)
    for entry in manifest["exports"]:
        check = entry.get("check")
        print(f"{entry['name']:10s} {entry['path']:32s} "
              f"{check['verdict'] if isinstance(check, dict) else check or 'not checked'}")
    print(args.out)
    return 1 if manifest["flagged"] else 0


def cmd_push(args) -> int:
    from finetune import hub, runinfo

    run_dir = runinfo.run_path(args.run)
    result = hub.push(run_dir, args.repo, folder=args.folder, adapter=args.adapter,
                      merge=args.merge, gguf_types=args.gguf, private=not args.public,
                      check=args.check, force=args.force, limit=args.limit,
                      progress=_progress_printer(), log=_err)
    print(result["url"])
    if args.space:
        space = hub.publish_chat_space(result["repo_id"], args.space, private=args.private_space,
                                       progress=_progress_printer(), log=_err)
        if space["note"]:
            _err(space["note"])
        print(space["url"])
    return 0


def cmd_models(args) -> int:
    from finetune import models

    print(models.resolve(args.model).describe())
    return 0


def cmd_bench(args) -> int:
    from finetune import bench

    names = bench.check_names(args.what)
    options = {k: getattr(args, k) for k in bench.TRAIN_OPTIONS if getattr(args, k) is not None}
    options.update({k: [x.strip() for x in v.split(",") if x.strip()] or None
                    for k, v in (("tasks", args.tasks), ("setups", args.setups))})
    if args.json:
        import contextlib

        with contextlib.redirect_stdout(sys.stderr):  # training logs as it goes: not the JSON
            results = bench.run_all(names, options)
        print(json.dumps(results, indent=2, default=str))
        return 0
    for name in names:
        print(f"{name}: {json.dumps(bench.run_one(name, options), default=str)}", flush=True)
    return 0


COMMANDS = {"train": cmd_train, "eval": cmd_eval, "chat": cmd_chat, "data": cmd_data,
            "runs": cmd_runs, "status": cmd_status, "stop": cmd_stop, "resume": cmd_resume,
            "models": cmd_models, "bench": cmd_bench, "export": cmd_export, "push": cmd_push}


TRAINING_COMMANDS = ("train", "resume", "bench")


def entry() -> None:
    """`python -m finetune` and the `finetune` script: a command that trains starts again with
    the faster allocator first (`allocator.reexec`), then `main`."""
    if sys.argv[1:2] and sys.argv[1] in TRAINING_COMMANDS:
        from finetune import allocator

        allocator.reexec()
    sys.exit(main())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except FinetuneError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
