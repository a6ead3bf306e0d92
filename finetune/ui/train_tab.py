"""The Train tab: settings built from the config's metadata, a plan with reasons, a live view.

The tab never holds a handler open for a run: Start spawns the training process
(`finetune.jobs.launch`) and a gr.Timer polls the run directory until the run ends, so closing the
browser loses nothing.
"""

from __future__ import annotations

import shlex

import gradio as gr

from finetune import config, preview
from finetune.ui.common import run_choices, user_errors

BASIC = ["model", "data", "method", "name"]
GROUP_TITLES = {"data": "Data", "lora": "LoRA", "schedule": "Schedule", "machine": "Machine",
                "evaluation": "Validation and stopping", "distributed": "Several GPUs"}
# Several machines start from a terminal (a command per machine, or a Slurm script), so their
# settings are left to the CLI and YAML; several GPUs are offered only where there are.
TERMINAL_ONLY, SEVERAL_GPUS = {"cluster"}, "distributed"
POLL_S = 2.0
LOSS_SERIES, LR_SERIES = ("train", "validation"), ("learning rate",)
SCORE_SERIES = ("validation answers",)


def _widget(name: str):
    f = config.FIELDS[name]
    meta = f.metadata
    label = name.replace("_", " ")
    if "choices" in meta:
        return gr.Dropdown(meta["choices"], value=f.default, label=label, info=meta["help"])
    if f.type == "bool":
        return gr.Checkbox(value=f.default, label=label, info=meta["help"])
    if f.type in ("int", "float"):
        return gr.Number(value=f.default, label=label, info=meta["help"])
    return gr.Textbox(value=str(f.default), label=label, info=meta["help"])


def config_from_widgets(names: list[str], values: list) -> config.RunConfig:
    data = {}
    for name, value in zip(names, values):
        if isinstance(value, str) and value.strip() == "" and config.FIELDS[name].default != "":
            value = config.FIELDS[name].default
        data[name] = value
    return config.from_dict(data, source="Train tab")


def cli_command(cfg: config.RunConfig) -> str:
    default = config.RunConfig()
    parts = ["python -m finetune train"]
    for name in config.FIELDS:
        value = getattr(cfg, name)
        if value != getattr(default, name):
            parts.append(f"--{name.replace('_', '-')} {shlex.quote(str(value))}")
    return " \\\n  ".join(parts)


def plan_rows(planned) -> list[list[str]]:
    """[setting, value, why] for each decision of a finetune.plan.Plan."""
    return [[name.replace("_", " "), str(getattr(planned.config, name, "")), reason]
            for name, reason in planned.reasons.items()]


def show_plan(planned, cfg: config.RunConfig) -> tuple:
    """The plan table, its YAML and the CLI command; a warning when it will not fit, and one
    for each trap the data checks found (too few rows, labels out of balance)."""
    for warning in planned.warnings:
        gr.Warning(warning)
    return plan_rows(planned), planned.config.to_yaml(), cli_command(cfg)


def from_data_tab(state: dict | None):
    """What the Data tab hands over: data, format, test file, and its max length ('auto' unless
    one was typed there)."""
    state = state or {}
    return (state.get("data", config.DEFAULT_DATA), state.get("data_format", "auto"),
            state.get("test_data", ""), str(state.get("max_length", config.AUTO)))


def status_markdown(st: dict, run_name: str) -> str:
    if not st:
        return "No run selected. Press **Start training** (the defaults work as they are)."
    state = st.get("state", "?")
    parts = [f"**{run_name}**: **{state}**, step {st.get('step', 0)} of {st.get('total_steps', '?')}"]
    if state in ("running", "starting") and st.get("eta_s") is not None:
        parts.append(f"ETA {int(st['eta_s']) // 60} min {int(st['eta_s']) % 60} s "
                     f"({st.get('s_per_step', '?')} s/step)")
    if st.get("end_reason"):
        parts.append(st["end_reason"])
    if st.get("error"):
        parts.append(f"**Error:** {st['error']}")
    if state == "completed":
        parts.append("Next: open the **Evaluate** tab to compare base and tuned, or **Chat**.")
    if state in ("stopped", "interrupted"):
        parts.append("Press **Resume** to continue from the latest checkpoint.")
    return "  \n".join(parts)


def score_words(curves: dict) -> str:
    """The latest validation score and the best so far, in words ('' before the first)."""
    if not curves["score"]:
        return ""
    exact = curves["score_metric"] == "exact_match"

    def words(value, rows):
        return f"{round(value * rows)} of {rows} right" if exact else f"ROUGE-L {value:.2f}"

    step, value, rows = curves["score"][-1]
    best = max(curves["score"], key=lambda p: p[1])
    return (f"validation answers: {words(value, rows)} at step {step} (best {words(*best[1:])} "
            f"at step {best[0]})")


def live_view(name: str | None):
    """Status text, loss, validation-answer and learning-rate frames, log tail and whether to
    keep polling, for the run of that name."""
    from finetune import jobs, runinfo
    from finetune.errors import RunError

    try:
        run_dir = runinfo.named_run(name)
    except RunError:  # none picked, or deleted meanwhile
        return (status_markdown({}, ""), _frame([], LOSS_SERIES), _frame([], SCORE_SERIES),
                _frame([], LR_SERIES), "", False)
    from finetune import overfit

    st, curves = jobs.status(run_dir), runinfo.curves(run_dir)
    text = status_markdown(st, run_dir.name)
    if curves["score"]:
        text += "  \n" + score_words(curves)
    found = overfit.overfitting(runinfo.read_metrics(run_dir))
    if found:
        text += f"  \n⚠ **{found['message']}**"
    if curves["tokens_per_s"]:
        text += f"  \n{curves['tokens_per_s']:.0f} tokens/s (median of the last 5 steps)"
    lr = [(step, value, "learning rate") for step, value in curves["lr"]]
    score = [(step, value, SCORE_SERIES[0]) for step, value, _ in curves["score"]]
    return (text, _frame(curves["loss"], LOSS_SERIES), _frame(score, SCORE_SERIES),
            _frame(lr, LR_SERIES), runinfo.log_tail(run_dir), st.get("state") in jobs.ACTIVE)


def _frame(points: list[tuple], series: tuple[str, ...]):
    """Plot data with numeric step/value and text series columns, and one empty (NaN) row for
    every series: Gradio's plot fixes its field types and colours from the first value it gets,
    so that value must already have the right types and every series (an empty frame drew no
    line and a '-Infinity' legend for the whole run)."""
    import pandas as pd

    rows = [(float("nan"), float("nan"), name) for name in series] + \
        [(float(step), float(value), name) for step, value, name in points]
    frame = pd.DataFrame(rows, columns=["step", "value", "series"])
    return frame.astype({"step": "float64", "value": "float64", "series": "object"})


def offer_several_gpus():
    """The processes and strategy settings, shown only where there is more than one GPU."""
    from finetune import hardware

    return gr.update(visible=hardware.gpu_count() > 1)


def build_train_tab(demo: gr.Blocks, data_state: gr.State, model_state: gr.State) -> None:
    from finetune import presets

    gr.Markdown("Every setting marked **auto** is decided from your data and this machine; "
                "**Check settings** shows the value and the reason before anything runs.")
    names: list[str] = []
    widgets: list = []
    with gr.Row():
        preset = gr.Dropdown(["(none)", *presets.PRESETS], value="(none)", label="preset",
                             info="Fills in a few settings; the rest stay as they are.")
        for name in BASIC:
            names.append(name)
            widgets.append(_widget(name))
    with gr.Accordion("Advanced settings", open=False):
        for group, fields in config.groups().items():
            fields = [n for n in fields if n not in BASIC]
            if not fields or group in TERMINAL_ONLY:
                continue
            with gr.Column(visible=group != SEVERAL_GPUS) as box:
                gr.Markdown(f"**{GROUP_TITLES.get(group, group.title())}**")
                with gr.Row():
                    for name in fields:
                        names.append(name)
                        widgets.append(_widget(name))
            if group == SEVERAL_GPUS:
                several_gpus = box
    by_name = dict(zip(names, widgets))

    with gr.Row():
        check_btn = gr.Button("Check settings")
        start_btn = gr.Button("Start training", variant="primary")
        stop_btn = gr.Button("Stop", variant="stop")
        resume_btn = gr.Button("Resume")
    plan_df = gr.Dataframe(headers=["setting", "value", "why"], label="Resolved settings",
                           interactive=False, wrap=True)
    with gr.Accordion("Copy as YAML / CLI command", open=False):
        yaml_box = gr.Code(language="yaml", label="config.yaml")
        cli_box = gr.Code(language="shell", label="the same run from a terminal")

    gr.Markdown("### Run")
    with gr.Row():
        run_pick = gr.Dropdown(label="run", choices=[], interactive=True, scale=4)
        refresh_btn = gr.Button("Refresh", scale=1)
    status_md = gr.Markdown()
    with gr.Row():
        loss_plot = gr.LinePlot(_frame([], LOSS_SERIES), x="step", y="value", color="series",
                                title="loss", height=260)
        score_plot = gr.LinePlot(_frame([], SCORE_SERIES), x="step", y="value", color="series",
                                 title="validation answers (share right, or ROUGE-L)",
                                 height=260, y_lim=[0, 1], visible=False)
        lr_plot = gr.LinePlot(_frame([], LR_SERIES), x="step", y="value", color="series",
                              title="learning rate", height=260)
    with gr.Accordion("Log (last lines)", open=False):
        log_box = gr.Code(label="train.log", lines=12)
    gr.Markdown("### All runs")
    runs_df = gr.Dataframe(interactive=False, wrap=True)
    timer = gr.Timer(POLL_S, active=False)

    def apply_preset(name):
        values = presets.get(name) if name and name != "(none)" else {}
        return [gr.update(value=values[n]) if n in values else gr.update() for n in names]

    preset.change(apply_preset, preset, widgets)
    data_state.change(from_data_tab, data_state, [by_name[n] for n in
                                                  ("data", "data_format", "test_data", "max_length")])
    # The Data tab counts tokens with this model's tokenizer and cuts for its context.
    by_name["model"].change(lambda model: model, by_name["model"], model_state)

    @user_errors
    def check(*values):
        from finetune import plan

        cfg = preview.check_browser_sources(config_from_widgets(names, list(values)))
        return show_plan(plan.plan(cfg), cfg)

    check_btn.click(check, widgets, [plan_df, yaml_box, cli_box])

    def refresh(selected=None, shown=None):
        """The run picker (the picked run kept; else the one training, else the newest), the
        runs table, and the choices shown; the picker is left alone when its choices are the
        same (so an open list does not close every poll)."""
        import pandas as pd

        from finetune import jobs

        choices = run_choices()
        names = [name for _, name in choices]
        if selected not in names:
            active = jobs.active_run()
            selected = active.name if active else (names[0] if names else None)
        pick = gr.skip() if choices == shown else gr.update(choices=choices, value=selected)
        return pick, pd.DataFrame(jobs.runs_table()), choices

    def tick(name, shown=None):
        """One poll: the run's status, curves and log, and the runs as they are now."""
        text, loss, score, lr, log, active = live_view(name)
        # A run that scores no answers (long answers, several processes) has no such plot.
        scored = bool(score["value"].notna().any())
        return (text, loss, gr.update(value=score, visible=scored), lr, log,
                gr.Timer(active=active), *refresh(name, shown))

    @user_errors
    def start(*values, progress=gr.Progress()):
        from finetune import jobs

        cfg = preview.check_browser_sources(config_from_widgets(names, list(values)))
        progress(0.1, desc="Resolving settings (the first run prepares the bundled model)")
        planned = jobs.launch(cfg)
        return (*show_plan(planned, cfg), *refresh(planned.run_dir.name), gr.Timer(active=True))

    shown = gr.State([])  # the picker's choices as last sent to the page
    listing = [run_pick, runs_df, shown]
    live = [status_md, loss_plot, score_plot, lr_plot, log_box, timer, *listing]
    start_btn.click(start, widgets, [plan_df, yaml_box, cli_box, *listing, timer],
                    show_progress_on=plan_df).then(
        tick, [run_pick, shown], live)
    timer.tick(tick, [run_pick, shown], live)
    run_pick.input(tick, [run_pick, shown], live)  # a person's pick (updates from here: no loop)

    def run_action(action: str):
        """A button that acts on the picked run (stop, resume), then shows it."""

        @user_errors
        def handler(name, shown):
            from finetune import jobs, runinfo

            getattr(jobs, action)(runinfo.named_run(name))
            return tick(name, shown)  # a resumed run is active again, so polling restarts

        return handler

    stop_btn.click(run_action("stop"), [run_pick, shown], live, api_name="stop_run")
    resume_btn.click(run_action("resume"), [run_pick, shown], live, api_name="resume_run")
    demo.load(offer_several_gpus, None, several_gpus)
    # Reattach on page load: pick the run that is training now (or the newest) and poll it
    # while it is active; the Refresh button does the same.
    for trigger in (demo.load, refresh_btn.click):
        trigger(refresh, run_pick, listing).then(tick, [run_pick, shown], live)
