"""`arlon serve`, the web page.

Without a browser: the page's form is checked as `arlon generate` checks its arguments (the same
messages), the page's generation makes what its `arlon generate` command makes, and Stop keeps the
frames made so far. In a real browser (Debian's headless chromium, driven by playwright; `make
test` installs both), against `arlon serve` on the embedded model: a two-prompt timeline becomes a
video that plays, a bad timeline is refused before anything runs, and a prompt typed while a video
is made takes effect from a later frame, while a second visitor waits in the queue.
"""

import importlib.util
import itertools
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest

from arlon import cli
from arlon.data.video_io import read_video, video_info
from arlon.errors import ArlonError
from arlon.pipeline import ARLONPipeline, DiTSampling
from arlon.pipeline.output import VideoOutput, write_video
from arlon.serve.session import Form, Generation, Settings, read_form
from arlon.timeline import Timeline
from arlon.world.detect import Detector

RED = "a red circle moves right on a black background"
RED_UP = "a red circle moves up on a black background"
BLUE = "a blue circle moves right on a black background"
TURNS_BLUE = "the circle turns blue"  # after RED: BLUE, stated as the change


# -- the form and the generations, without a browser ---------------------------------------------


@pytest.mark.parametrize(
    "form,message",
    [
        (Form("", [["10", RED]]), "a timeline must start at frame 0, this one starts at 10"),
        (Form(RED, [["40", ""]]), "the prompt at 40 is empty"),
        (Form(RED, [["40", BLUE], ["20", RED]]), "start frames must be strictly increasing"),
        (Form(RED, frames=0), "argument --frames: must be a positive integer, got 0"),
        (Form(RED, steps=2.5), "argument --steps: expected a number, got '2.5'"),
        (Form(RED, seed=-1), "argument --seed: a seed is an integer in [0, 2**63), got -1"),
        (Form(RED, guidance=-1), "argument --guidance: must be 0 or more, got -1"),
        (Form(RED, ar_guidance=None), "argument --ar-guidance: expected a number, got ''"),
    ],
)
def test_form_mistakes_are_the_messages_arlon_generate_gives(form, message, tmp_path, capsys):
    with pytest.raises(ArlonError) as caught:
        read_form(form, fps=8)
    assert message in str(caught.value)
    # `arlon generate` given the same: its one line says the same
    timeline = tmp_path / "timeline.txt"
    rows = ([[0, form.prompt]] if form.prompt else []) + form.rows
    timeline.write_text("".join(f"{start}\t{prompt}\n" for start, prompt in rows))
    argv = ["generate", "--timeline", timeline, "--model", tmp_path / "unused", "--mode", "arlon"]
    for name in ("frames", "steps", "seed", "guidance", "ar_guidance"):
        value = getattr(form, name)
        text = "" if value is None else str(int(value) if float(value).is_integer() else value)
        argv += [f"--{name.replace('_', '-')}", text]
    assert cli.main([str(a) for a in argv]) == 2
    assert str(caught.value) in capsys.readouterr().err


def test_form_rows_take_frames_or_times_and_skip_empty_rows():
    form = Form(RED, [["", ""], ["2.5s", RED_UP], [" 40 ", BLUE], [None, None]], frames=60)
    assert read_form(form, fps=8).timeline == Timeline([(0, RED), (20, RED_UP), (40, BLUE)])
    for start in ("soon", "-8", "1.5", "infs"):
        with pytest.raises(ArlonError, match=f"row 1: expected a start frame .* got '{start}'"):
            read_form(Form(RED, [[start, BLUE]]), fps=8)
    with pytest.raises(ArlonError, match="at most 600"):
        read_form(Form(RED, frames=601), fps=8, max_frames=600)


@pytest.mark.parametrize("mode", ["arlon", "baseline", "ar-only"])
def test_the_page_makes_what_its_arlon_generate_command_makes(folder, tmp_path, capsys, mode):
    pipe = ARLONPipeline.from_pretrained(folder)
    timeline = Timeline([(0, RED), (12, BLUE)])
    settings = Settings(timeline, frames=25, steps=1, seed=3, mode=mode, ar_guidance=2)
    run = Generation(pipe, settings, tmp_path / "page")
    result = run.run()
    assert result.timeline == timeline and result.frames == 25 and not result.stopped
    with pytest.raises(ArlonError, match="too late"):  # never accepted, then dropped
        run.direct(BLUE)

    argv = shlex.split(settings.command(result.timeline_file, model=folder))[1:]
    argv[argv.index("-o") + 1] = str(tmp_path / "cli.mp4")
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert video_info(result.video).num_frames == 25
    assert result.video.read_bytes() == (tmp_path / "cli.mp4").read_bytes()
    if mode == "baseline":  # no AR: no coarse video
        assert result.coarse is None
    else:
        assert video_info(result.coarse).num_frames == 25


def test_stop_keeps_the_frames_made_as_ctrl_c_does(folder, tmp_path):
    pipe = ARLONPipeline.from_pretrained(folder)
    settings = Settings(Timeline.of(RED), frames=4000, steps=1, seed=1)
    run = Generation(pipe, settings, tmp_path / "page")
    run.start()
    while run.snapshot().frames[0] == 0:
        assert not run.join(0.01), "the generation ended before it could be stopped"
    run.stop()
    run.join()
    result = run.result()
    assert result.stopped and 0 < result.frames < 4000
    assert video_info(result.video).num_frames == result.frames
    # the frames kept are those an uninterrupted run starts with
    stream = pipe.stream(RED, num_frames=4000, sampling=DiTSampling(1), seed=1, progress=False)
    first = itertools.islice(stream, result.frames)
    write_video(first, VideoOutput(tmp_path / "first.mp4"), fps=pipe.config.fps)
    assert result.video.read_bytes() == (tmp_path / "first.mp4").read_bytes()
    with pytest.raises(ArlonError, match="too late"):
        run.direct(BLUE)
    queued = Generation(pipe, settings, tmp_path / "queued")
    queued.stop()  # while it waits in the queue: the visitor is free at once, nothing is made
    assert queued.join(0)
    queued.start()
    assert queued.result().stopped and queued.result().video is None and queued.join(0)


def test_serve_help_and_mistakes_are_one_line(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0 and "usage: arlon serve" in capsys.readouterr().out
    for argv, message in [
        (["--port", "0"], "argument --port: must be a positive integer, got 0"),
        (["--port", "70000"], "argument --port: must be a port number in [1, 65535]"),
        (["--model", str(tmp_path / "none")], "no such pipeline folder"),
    ]:
        assert cli.main(["serve", *argv]) == 2 and message in capsys.readouterr().err
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # no gradio installed
    assert cli.main(["serve"]) == 2
    assert "arlon serve needs Gradio: pip install 'arlon[serve]'" in capsys.readouterr().err


# -- the page in a browser ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`arlon serve` on the embedded model, on a free port: its URL."""
    pytest.importorskip("gradio", reason="the serve extra is not installed: pip install '.[serve]'")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path_factory.mktemp("server") / "serve.log"
    command = [sys.executable, "-m", "arlon.cli", "serve", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_up(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_up(url: str, process: subprocess.Popen, log, limit: float = 180) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"arlon serve exited with {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"arlon serve did not answer in {limit} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it)")
    with sync_api.sync_playwright() as playwright:
        # --no-sandbox: chromium refuses to run as root with its sandbox (CI runs as root)
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def open_page(browser, server):
    """Open the page in a fresh browser context; every request that leaves this machine is
    blocked and listed in `page.outside`."""
    contexts = []

    def open_() -> object:
        context = browser.new_context(viewport={"width": 1280, "height": 1000})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(30_000)
        page.outside = []

        def local_only(route):
            if route.request.url.startswith(server):
                route.continue_()
            else:
                page.outside.append(route.request.url)
                route.abort()

        page.route("**/*", local_only)
        page.goto(server)
        page.wait_for_selector("#generate")
        return page

    yield open_
    for context in contexts:
        context.close()


def _write_story(page, prompt: str, rows: list[tuple[str, str]], frames: int) -> None:
    """Type a prompt and the timeline's later rows, as a user does."""
    page.fill("#prompt textarea", prompt)
    for n, row in enumerate(rows):
        if n > 0:
            page.click("#add-row")
        for column, text in enumerate(row):
            _edit_cell(page, n, column, text)
    page.fill("#frames input", str(frames))


def _edit_cell(page, row: int, column: int, text: str) -> None:
    """Replace a timeline cell's text as a user does: double-click, type once the editor has the
    focus (keys typed before it has are lost), Enter."""
    from playwright.sync_api import expect

    cell = page.locator(f'#timeline [data-testid="cell-{row}-{column}"]')
    cell.dblclick()
    editor = cell.locator('textarea[aria-label="Edit cell"]')
    expect(editor).to_be_focused()
    page.keyboard.press("Control+A")
    page.keyboard.type(text)
    expect(editor).to_have_value(text)
    page.keyboard.press("Enter")


def _stage(page, key: str) -> tuple[int, int]:
    """`(done, total)` of a stage ("ar", "dit", "vae") on the progress panel."""
    stage = page.locator(f'#progress [data-stage="{key}"]')
    return int(stage.get_attribute("data-done")), int(stage.get_attribute("data-total"))


def _served_video(page, selector: str, path) -> np.ndarray:
    """The file the video element plays, fetched as the browser does: `(C, T, H, W)` uint8."""
    src = page.locator(f"{selector} video").get_attribute("src")
    path.write_bytes(page.request.get(src).body())
    return read_video(path)


PLAY = """async (selector) => {
    const video = document.querySelector(selector + " video");
    video.muted = true;
    await video.play();
    await new Promise((done) => video.addEventListener("timeupdate", done, {once: true}));
    return {error: video.error && video.error.code, duration: video.duration,
            playing: video.currentTime > 0 && !video.paused, width: video.videoWidth};
}"""


def test_a_two_prompt_timeline_becomes_a_video_that_plays(open_page, tmp_path):
    page = open_page()
    _write_story(page, RED, [("16", RED_UP)], frames=33)
    page.click("#generate")
    page.wait_for_selector("#video video", timeout=300_000)
    page.wait_for_selector("#coarse video")
    assert "made 33 frames" in page.inner_text("#progress")
    assert _stage(page, "vae") == (33, 33) and _stage(page, "ar")[0] > 0

    played = page.evaluate(PLAY, "#video")
    assert played["error"] is None and played["playing"] and played["width"] == 64
    assert played["duration"] == pytest.approx(33 / 8)  # 33 frames at the model's 8 fps
    assert _served_video(page, "#video", tmp_path / "video.mp4").shape[1] == 33
    assert _served_video(page, "#coarse", tmp_path / "coarse.mp4").shape[1] == 33

    assert page.input_value("#recorded textarea") == f"0\t{RED}\n16\t{RED_UP}\n"
    assert page.locator('#made tr[data-start="16"]').count() == 1  # the switch under the player
    assert "arlon generate --timeline timeline.txt --frames 33" in page.input_value(
        "#command textarea"
    )
    page.screenshot(path=tmp_path / "serve.png", full_page=True)
    assert page.outside == []  # nothing fetched from the internet: the page works offline


def test_a_bad_timeline_is_refused_before_anything_runs(open_page):
    page = open_page()
    _write_story(page, "", [("10", RED)], frames=33)
    page.click("#generate")
    page.wait_for_selector("#messages .error")
    message = "error: a timeline must start at frame 0, this one starts at 10"
    assert page.inner_text("#messages") == message
    page.fill("#prompt textarea", RED)
    _edit_cell(page, 0, 0, "20")
    page.fill("#frames input", "0")
    page.click("#generate")
    page.wait_for_function(
        "() => document.querySelector('#messages').innerText.includes('--frames')"
    )
    assert page.inner_text("#messages") == (
        "error: argument --frames: must be a positive integer, got 0"
    )
    assert "waiting for a story" in page.inner_text("#progress")
    assert page.locator("#video video").count() == 0


def test_a_story_of_the_shapes_world_is_one_click_away(open_page):
    from arlon.evaluation.suite import read_suite

    stories = read_suite("stories")
    first = stories.videos[0]
    page = open_page()
    page.locator("button.gallery-item", has_text=first[0][1][:40]).click()
    page.wait_for_function(
        "(p) => document.querySelector('#prompt textarea').value === p", arg=first[0][1]
    )
    assert page.input_value("#frames input") == str(stories.frames)
    last = len(first) - 2  # the editor's rows: the prompts after the first
    cell = page.locator(f'#timeline [data-testid="cell-{last}-1"]')
    assert cell.inner_text().strip() == first[-1][1]


def test_a_prompt_typed_while_the_video_is_made_takes_effect_from_a_later_frame(
    open_page, tmp_path
):
    page, other = open_page(), open_page()
    frames = 160
    _write_story(page, RED, [], frames=frames)
    page.click("#generate")
    page.wait_for_selector('#progress [data-stage="vae"]:not([data-done="0"])', timeout=300_000)
    shown, total = _stage(page, "vae")
    assert page.locator("#preview img").count() == 1 and shown < total  # frames as they come
    page.fill("#direct textarea", TURNS_BLUE)
    page.click("#direct-button")

    # meanwhile a second visitor waits in the queue, told where, and gives up
    _write_story(other, RED, [], frames=33)
    other.click("#generate")
    # Gradio's own count ("queue: 1/1"), not the page's "in the queue" of the form's check
    other.wait_for_function(
        "() => /queue: *\\d+ *\\/ *\\d+/.test(document.querySelector('#progress').innerText)"
    )
    other.click("#stop")

    page.wait_for_selector("#video video", timeout=300_000)
    recorded = page.input_value("#recorded textarea").splitlines()
    assert recorded[0] == f"0\t{RED}" and len(recorded) == 2
    start, prompt = recorded[1].split("\t")
    start = int(start)
    assert prompt == TURNS_BLUE and shown <= start < frames  # after the frames shown when typed
    assert start + 32 <= frames, f"directed at frame {start}: too few frames after it to judge"
    row = page.inner_text(f'#made tr[data-start="{start}"]')
    assert "directed live" in row and BLUE in row.lower()  # read as the whole scene it asks for

    video = _served_video(page, "#video", tmp_path / "video.mp4").transpose(1, 2, 3, 0)
    assert len(video) == frames
    found = [Detector()(frame).by_colour() for frame in video]  # colour -> object, per frame
    before, after = found[:start], found[start + 16 :]  # a recolouring takes ~8 frames to hold
    assert _share(before, "red") > 0.5 and _share(before, "blue") < 0.2
    assert _share(after, "blue") > 0.5 and _share(after, "red") < 0.2

    other.wait_for_function(
        "() => /stopped/.test(document.querySelector('#progress').innerText)", timeout=120_000
    )


def _share(found: list[dict], colour: str) -> float:
    """The share of frames in which the detector finds an object of `colour`."""
    return sum(colour in objects for objects in found) / len(found)
