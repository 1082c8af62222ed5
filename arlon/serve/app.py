"""The web page of `arlon serve` (Gradio): write a story, watch it become a video.

    page = build(pipe, workdir)          # gr.Blocks; `serve()` builds and launches it
    page.queue(default_concurrency_limit=1).launch(server_port=7860, css=CSS)

The page keeps nothing of a generation but the `Generation` of `arlon.serve.session`: the Generate
button checks the form at once (no queue: a mistake is shown before anything runs), then waits in
Gradio's queue, which runs one generation at a time and tells the others their place. Stop and
Direct act on the session's generation at once, outside the queue. Everything the page needs is
served by this process: no fonts or scripts are fetched from elsewhere.
"""

from __future__ import annotations

import html
import itertools
import shutil
import tempfile
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import numpy as np

from arlon.cli.common import cut_prompt_warnings, reading_notes, unknown_word_warnings
from arlon.errors import ArlonError
from arlon.evaluation.suite import read_suite
from arlon.models.ar_sampler import GUIDANCE_SCALE
from arlon.serve.session import Form, Generation, Progress, Result, read_form, start_frame
from arlon.timeline import Timeline
from arlon.world.prompts import whole_scenes

MODES = [("ARLON", "arlon"), ("baseline (DiT alone)", "baseline"), ("AR only", "ar-only")]
# (key, name, unit) of each stage the progress panel shows
STAGES = (
    ("ar", "AR tokens", "token frames"),
    ("dit", "DiT segments", "segments"),
    ("vae", "VAE frames", "frames"),
)
PREVIEW_SCALE = 4  # the preview's pixels per video pixel
POLL_SECONDS = 0.25  # how often the page is told the progress
KEEP_RUNS = 8  # run folders kept on disk (the page serves its own copies of their files)

CSS = """
#preview img, #video video, #coarse video { image-rendering: pixelated; }
.arlon-progress .stage { display: grid; grid-template-columns: 9em 1fr 11em; gap: .6em;
  align-items: center; margin: .3em 0; }
.arlon-progress progress { width: 100%; height: 1.1em; }
.arlon-progress .status { margin-top: .4em; opacity: .8; }
#messages .error { color: #c0392b; font-weight: 600; }
#messages .warning { color: #b9770e; }
#messages .note { color: #555; }
.arlon-strip { position: relative; height: 2.2em; border-radius: 4px; margin: .4em 0 .2em; }
.arlon-strip .part { position: absolute; top: 0; bottom: 0; overflow: hidden; white-space: nowrap;
  font-size: .8em; padding: .45em .4em; color: #fff; border-left: 2px solid #fff; }
.arlon-strip .part.live { outline: 2px dashed #f1c40f; outline-offset: -3px; }
.arlon-switches td, .arlon-switches th { padding: .15em .6em; text-align: left; }
"""
INTRO = (
    "## ARLON: write a story, watch it become a video\n"
    "A prompt, and later prompts from any frame (or time: `15s`). The AR transformer draws coarse "
    "tokens for the whole video; the DiT renders them segment by segment. While it runs, "
    "**Direct** changes the prompt from the next token frame on."
)
STRIP_COLOURS = ("#2e86c1", "#28b463", "#af7ac5", "#d35400", "#16a085", "#7f8c8d")


class Handlers:
    """What the page's events do. One for the server; each visitor's `Generation` lives in the
    visitor's `gr.State`, where Stop and Direct find it."""

    def __init__(self, pipe, workdir: str | Path, model: Path | None, max_frames: int):
        self.pipe, self.model, self.max_frames = pipe, model, max_frames
        self.fps = pipe.config.fps
        self.workdir = Path(workdir)
        self._ids = itertools.count()  # next() on a count is atomic: two visitors never share

    def check(self, prompt, rows, frames, steps, seed, mode, ar_guidance, guidance, run):
        """The form -> messages, progress, the visitor's generation, whether it may start."""
        if run is not None and not run.join(0):
            busy = "a video is being made or waits in the queue: stop it first"
            return _messages(error=busy), gr.skip(), gr.skip(), False
        form = Form(prompt or "", rows or [], frames, steps, seed, mode, guidance, ar_guidance)
        try:
            settings = read_form(form, self.fps, self.max_frames)
        except ArlonError as e:
            return _messages(error=str(e)), gr.skip(), gr.skip(), False
        warnings = unknown_word_warnings(settings.timeline)
        warnings += cut_prompt_warnings(settings.timeline, self.pipe.text_encoder)
        queued = _progress_html(None, idle="in the queue: it starts when the one before is done")
        run = Generation(self.pipe, settings, self.workdir / f"run-{next(self._ids):04d}")
        for old in sorted(self.workdir.glob("run-*"))[:-KEEP_RUNS]:  # the page holds its copies
            shutil.rmtree(old, ignore_errors=True)
        notes = reading_notes(settings.timeline)
        return _messages(warnings=warnings, notes=notes), queued, run, True

    @staticmethod
    def gate(ok: bool) -> None:
        if not ok:  # `check` said why
            raise gr.Error("the form has a mistake", visible=False, print_exception=False)

    def generate(self, run: Generation):
        """The page's outputs while `run` works, then its results."""
        run.start()
        shown = None
        try:
            while not run.join(POLL_SECONDS):
                progress = run.snapshot()
                frame = None if progress.frames[0] == shown else _preview(progress.frame)
                yield _running(progress, frame, clear=shown is None)
                shown = progress.frames[0]
        finally:  # also when the visitor leaves: nobody would see the rest
            run.stop()
            run.join()
        try:
            result = run.result()
        except ArlonError as e:
            raise gr.Error(str(e)) from None
        yield _finished(run, result, self.model)

    @staticmethod
    def stop(run: Generation | None) -> None:
        if run is not None:
            run.stop()

    @staticmethod
    def direct(prompt: str, run: Generation | None) -> str:
        if run is None:
            raise gr.Error("nothing is being made: Generate first, then direct it here")
        try:
            run.direct(prompt or "")
        except ArlonError as e:
            raise gr.Error(str(e)) from None
        gr.Info("directed: it takes effect at the next token frame the AR draws")
        return ""

    def sorted_rows(self, rows: list[list]) -> list[list]:
        """The editor's rows in the order of their start frames (rows without one last)."""

        def key(row: list) -> tuple[int, int]:
            try:
                return 0, start_frame(str(row[0] if row else "").strip(), self.fps)
            except ArlonError:
                return 1, 0

        return sorted(rows or [], key=key)


def build(pipe, workdir: str | Path, model: Path | None = None, max_frames: int = 2400):
    """The page (`gr.Blocks`) for `pipe`, its generations written under `workdir`."""
    on = Handlers(pipe, workdir, model, max_frames)
    with gr.Blocks(title="ARLON", analytics_enabled=False, delete_cache=(3600, 3600)) as page:
        run = gr.State(None)  # the visitor's latest generation
        ok = gr.State(False)  # whether the form passed `check`
        gr.Markdown(INTRO)
        with gr.Row():
            story = _story_column(pipe.config.guidance_scale)
            live = _live_column()
        stories = read_suite("stories")
        gr.Examples(
            [[t[0][1], [[str(s), p] for s, p in t[1:]], stories.frames] for t in stories.videos],
            [story.prompt, story.table, story.frames],
            label=f"The shapes world's stories ({stories.frames} frames each)",
            example_labels=[t[0][1] for t in stories.videos],  # the page shortens them
            examples_per_page=6,
        )
        made = _results()

        form = [story.prompt, story.table, story.frames, story.steps, story.seed, story.mode]
        form += [story.ar_guidance, story.guidance, run]
        outputs = [live.progress, live.preview, made.video, made.coarse, made.switches]
        outputs += [made.recorded, made.command, made.files, story.messages]
        checked = story.go.click(
            on.check, form, [story.messages, live.progress, run, ok], queue=False
        )
        checked.success(on.gate, ok, None, queue=False).success(
            on.generate,
            run,
            outputs,
            concurrency_limit=1,  # one generation at a time; the others wait in the queue
            concurrency_id="generation",
            show_progress="minimal",
            show_progress_on=[live.progress],  # where a waiting visitor sees their place
        )
        story.halt.click(on.stop, run, None, queue=False)
        for event in (live.steer.submit, live.steer_go.click):
            event(on.direct, [live.steer, run], live.steer, queue=False)
        story.add.click(
            lambda rows: [*(rows or []), ["", ""]], story.table, story.table, queue=False
        )
        story.order.click(on.sorted_rows, story.table, story.table, queue=False)
        story.clear.click(lambda: ("", [["", ""]]), None, [story.prompt, story.table], queue=False)
    return page


def _story_column(guidance: float) -> SimpleNamespace:
    """The story and the settings: the prompt, the timeline editor, the numbers (the DiT's text
    guidance at the model's own, `guidance`), the buttons."""
    ui = SimpleNamespace()
    with gr.Column(scale=5):
        ui.prompt = gr.Textbox(
            label="Prompt (from frame 0)",
            lines=2,
            elem_id="prompt",
            placeholder="a red circle moves right on a black background",
        )
        ui.table = gr.Dataframe(
            value=[["", ""]],
            headers=["start: frame, or time (15s)", "then the prompt"],
            datatype=["str", "str"],
            type="array",
            column_count=2,
            interactive=True,
            label="Timeline: later prompts (each row's menu adds or deletes rows)",
            elem_id="timeline",
            column_widths=["30%", "70%"],
        )
        with gr.Row():
            ui.add = gr.Button("Add a row", size="sm", elem_id="add-row")
            ui.order = gr.Button("Sort rows by start", size="sm", elem_id="sort-rows")
            ui.clear = gr.Button("Clear", size="sm", elem_id="clear-rows")
        with gr.Row():
            ui.frames = gr.Number(120, label="frames", precision=0, elem_id="frames")
            ui.steps = gr.Number(5, label="DiT steps", precision=0, elem_id="steps")
            ui.seed = gr.Number(0, label="seed", precision=0, elem_id="seed")
        with gr.Row():
            ui.mode = gr.Radio(MODES, value="arlon", label="mode", elem_id="mode")
            ui.ar_guidance = gr.Number(GUIDANCE_SCALE, label="AR guidance", elem_id="ar-guidance")
            ui.guidance = gr.Number(guidance, label="DiT guidance", elem_id="guidance")
        with gr.Row():
            ui.go = gr.Button("Generate", variant="primary", elem_id="generate")
            ui.halt = gr.Button("Stop", variant="stop", elem_id="stop")
        ui.messages = gr.HTML(elem_id="messages")
    return ui


def _live_column() -> SimpleNamespace:
    """What a generation shows as it works: progress, the latest frame, and live direction."""
    ui = SimpleNamespace()
    with gr.Column(scale=4):
        ui.progress = gr.HTML(_progress_html(None), elem_id="progress")
        ui.preview = gr.Image(
            label="frames as they are made",
            interactive=False,
            elem_id="preview",
            format="png",
            height=280,
        )
        with gr.Row():
            ui.steer = gr.Textbox(
                label="Direct: a new prompt for the video being made", elem_id="direct", scale=4
            )
            ui.steer_go = gr.Button("Direct", elem_id="direct-button", scale=1)
    return ui


def _results() -> SimpleNamespace:
    """The finished video beside the coarse one, its switch points, and how to make it again."""
    ui = SimpleNamespace()
    with gr.Row():
        ui.video = gr.Video(label="video", elem_id="video", buttons=["download"], height=320)
        ui.coarse = gr.Video(
            label="coarse video: the AR's tokens decoded, what guided the DiT",
            elem_id="coarse",
            buttons=["download"],
            height=320,
        )
    ui.switches = gr.HTML(elem_id="made")
    with gr.Row():
        ui.recorded = gr.Textbox(
            label="timeline.txt (the prompts it was made with)", lines=3, elem_id="recorded"
        )
        ui.command = gr.Textbox(label="the same video from the command line", elem_id="command")
    ui.files = gr.File(label="downloads", file_count="multiple", elem_id="files")
    return ui


def serve(model: Path | None, host: str, port: int, max_frames: int) -> None:
    """Load the pipeline, then serve the page until interrupted."""
    from arlon.pipeline import ARLONPipeline
    from arlon.weights import ROOT

    pipe = ARLONPipeline.from_pretrained(model or ROOT)
    with tempfile.TemporaryDirectory(prefix="arlon-serve-") as workdir:
        page = build(pipe, workdir, model, max_frames)
        page.queue(default_concurrency_limit=1)
        try:
            page.launch(
                server_name=host,
                server_port=port,
                show_error=True,
                allowed_paths=[workdir],
                footer_links=[],
                css=CSS,
            )
        except OSError as e:
            raise ArlonError(f"cannot serve on {host}:{port}: {e}") from None


# -- what the page shows --------------------------------------------------------------------------


def _running(progress: Progress, frame, clear: bool) -> list:
    """The outputs while a generation runs (`clear`: the previous video's results go)."""
    keep = gr.skip()
    results = [None, None, "", "", "", None] if clear else [keep] * 6
    return [_progress_html(progress), keep if frame is None else frame, *results, keep]


def _finished(run: Generation, result: Result, model: Path | None) -> list:
    """The outputs of a finished (or stopped) generation."""
    progress = run.snapshot()
    settings = run.settings
    video = None if result.video is None else str(result.video)
    coarse = None if result.coarse is None else str(result.coarse)
    files = [str(p) for p in (result.video, result.coarse, result.timeline_file) if p]
    done = f"made {result.frames} frames"
    if result.stopped:  # the command makes the whole video, which starts with these frames
        done = f"stopped: kept the first {result.frames} frames" if result.frames else "stopped"
    made = ""
    if result.frames:
        made = _made_html(result.timeline, settings.timeline, result.frames, run.pipe.config.fps)
    return [
        _progress_html(progress, done=done),
        _preview(progress.frame),
        video,
        coarse,
        made,
        "".join(f"{start}\t{prompt}\n" for start, prompt in result.timeline),
        settings.command(model=model),
        sorted(set(files)),
        gr.skip(),  # the form's warnings stay
    ]


def _preview(frame: np.ndarray | None):
    if frame is None:
        return None
    return frame.repeat(PREVIEW_SCALE, axis=0).repeat(PREVIEW_SCALE, axis=1)  # (H*4, W*4, 3)


def _progress_html(
    progress: Progress | None, done: str = "", idle: str = "waiting for a story"
) -> str:
    """Per stage, a bar of what is done; then the time and the switches so far (`idle`: what to
    say before a generation starts)."""
    if progress is None:
        counts = [(0, 0)] * len(STAGES)
        status = idle
    else:
        counts = [progress.token_frames, progress.segments, progress.frames]
        status = f"{progress.seconds:.1f} s"
        if len(progress.timeline) > 1:
            status += f" · switches at frames {', '.join(map(str, progress.timeline.starts[1:]))}"
    if done:
        status += f" · {html.escape(done)}"
    rows = []
    for (key, name, unit), (made, total) in zip(STAGES, counts, strict=True):
        count = "" if progress is None else "not in this mode"
        if total:
            count = f"{made} / {total} {unit}"
        rows.append(
            f'<div class="stage" data-stage="{key}" data-done="{made}" data-total="{total}">'
            f'<span>{name}</span><progress value="{made}" max="{max(total, 1)}"></progress>'
            f'<span class="count">{count}</span></div>'
        )
    rows = "".join(rows)
    return f'<div class="arlon-progress">{rows}<div class="status">{status}</div></div>'


def _made_html(timeline: Timeline, planned: Timeline, frames: int, fps: float) -> str:
    """The prompts under the player: a strip with each switch point, then a table of them, with
    how a prompt that states only a change was read."""
    live = set(timeline) - set(planned)
    parts, rows = [], []
    read_as = whole_scenes(timeline).prompts
    for k, ((start, prompt), read) in enumerate(zip(timeline, read_as, strict=True)):
        if start >= frames:
            break
        end = timeline.starts[k + 1] if k + 1 < len(timeline) else frames
        left, width = 100 * start / frames, 100 * (min(end, frames) - start) / frames
        tag = " live" if (start, prompt) in live else ""
        colour = STRIP_COLOURS[k % len(STRIP_COLOURS)]
        text = html.escape(prompt)
        parts.append(
            f'<div class="part{tag}" title="{text}" style="left:{left:.2f}%;width:{width:.2f}%;'
            f'background:{colour}">{start}</div>'
        )
        how = "directed live" if tag else "planned"
        rows.append(
            f'<tr data-start="{start}"><td>{start}</td><td>{start / fps:.1f} s</td><td>{how}</td>'
            f'<td>{text}</td><td class="read">{"" if read == prompt else html.escape(read)}</td></tr>'
        )
    head = "<tr><th>frame</th><th>time</th><th></th><th>prompt</th><th>read as</th></tr>"
    return (
        f'<div class="arlon-strip">{"".join(parts)}</div>'
        f'<table class="arlon-switches">{head}{"".join(rows)}</table>'
    )


def _messages(error: str = "", warnings: list[str] = (), notes: list[str] = ()) -> str:
    lines = [f'<div class="error">error: {html.escape(error)}</div>'] if error else []
    lines += [f'<div class="warning">warning: {html.escape(w)}</div>' for w in warnings]
    lines += [f'<div class="note">{html.escape(n)}</div>' for n in notes]
    return "".join(lines)
