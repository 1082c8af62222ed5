"""`arlon world render | score | dataset`: the shapes world, its ground truth and its judge."""

from __future__ import annotations

import argparse
from pathlib import Path

from arlon.cli.common import (
    VIDEO_SUFFIXES,
    count,
    emit_json,
    input_file,
    output_file,
    positive_float,
    positive_int,
    seed,
    share,
)
from arlon.errors import ArlonError
from arlon.timeline import Timeline
from arlon.world.simulate import check_size


def add_parsers(commands) -> None:
    world = commands.add_parser(
        "world",
        help="the shapes world: render episodes, score videos, build data sets",
        description="The shapes world: procedural captioned videos with per-frame ground truth, "
        "and the detector that scores any video against a caption timeline.",
    )
    sub = world.add_subparsers(title="world commands", required=True, metavar="COMMAND")
    _add_render(sub)
    _add_score(sub)
    _add_dataset(sub)


def _add_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--height", type=positive_int, default=64, help="a multiple of 8 (default 64)")
    p.add_argument("--width", type=positive_int, default=64, help="a multiple of 8 (default 64)")
    p.add_argument("--fps", type=positive_float, default=8.0, help="frames per second (default 8)")


def _add_render(sub) -> None:
    p = sub.add_parser(
        "render",
        help="render an episode (mp4 or gif) and its ground truth (json)",
        description="Render a shapes-world episode to OUT (.mp4 or .gif) and its timeline and "
        "per-frame ground truth to OUT with a .json suffix. Without --prompt/--timeline, the "
        "episode is random (seeded) with a caption change every 6-20 s.",
    )
    p.add_argument("--out", required=True, type=Path, help="output video, .mp4 or .gif")
    p.add_argument("--frames", type=positive_int, default=600, help="frames (default 600)")
    p.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    _add_size_args(p)
    source = p.add_mutually_exclusive_group()
    source.add_argument("--prompt", help="render this caption, e.g. 'a red circle moves right'")
    source.add_argument("--timeline", type=Path, help="file of START_FRAME<TAB>prompt lines")
    source.add_argument(
        "--no-events", action="store_true", help="random scene without caption changes (a clip)"
    )
    p.set_defaults(run=run_render)


def run_render(args: argparse.Namespace) -> None:
    output_file(args.out, VIDEO_SUFFIXES)
    check_size(args.height, args.width)
    timeline = None
    if args.prompt is not None or args.timeline is not None:
        timeline = Timeline.read(args.timeline) if args.timeline else Timeline.of(args.prompt)

    from arlon.data.world_dataset import write_episode
    from arlon.world.simulate import episode_from_timeline, random_episode

    size = dict(height=args.height, width=args.width, fps=args.fps)
    if timeline is not None:
        episode = episode_from_timeline(timeline, args.frames, args.seed, **size)
    else:
        episode = random_episode(args.seed, args.frames, events=not args.no_events, **size)
    truth = args.out.with_suffix(".json")
    write_episode(episode, args.out, truth, progress=True)
    print(f"wrote {args.out} ({args.frames} frames) and {truth}")
    for start, caption in episode.timeline[:5]:
        print(f"  {start:>6}  {caption}")
    if len(episode.timeline) > 5:
        more = len(episode.timeline) - 5
        print(f"  ... {more} more caption change{'s' * (more > 1)} in {truth}")


def _add_score(sub) -> None:
    p = sub.add_parser(
        "score",
        help="score a video against its ground truth or a prompt timeline",
        description="Detect the objects of every frame of VIDEO and print the world metrics as "
        "JSON: object_accuracy (each asked object in each frame with the asked colour, shape, size "
        "and motion; a missing one is wrong), precision (of the objects found, the asked ones), "
        "colour, shape, size, background, motion, speed, count, identity, switch latency, what a "
        "change left as it was, and drift. Later prompts of a timeline may state only a change "
        "('the circle turns blue').",
    )
    p.add_argument("video", type=Path, help="video to score (.mp4, .gif, ...)")
    expected = p.add_mutually_exclusive_group(required=True)
    expected.add_argument("--truth", type=Path, help="ground-truth json written by 'world render'")
    expected.add_argument("--timeline", type=Path, help="file of START_FRAME<TAB>prompt lines")
    expected.add_argument("--prompt", help="the single prompt the video was made from")
    p.add_argument("--out", type=Path, help="also write the metrics to this json file")
    p.set_defaults(run=run_score)


def run_score(args: argparse.Namespace) -> None:
    input_file(args.video, "video")
    if args.out is not None:
        output_file(args.out)
    timeline = None
    if args.truth is None:
        timeline = Timeline.read(args.timeline) if args.timeline else Timeline.of(args.prompt)

    from tqdm import tqdm

    from arlon.data.video_io import iter_frames, video_info
    from arlon.world.metrics import Expected, score_video

    info = video_info(args.video)
    if timeline is None:
        expected = Expected.read(args.truth)
        if (expected.height, expected.width) != (info.height, info.width):
            raise ArlonError(
                f"{args.video} is {info.height}x{info.width} but its truth is "
                f"{expected.height}x{expected.width}"
            )
        if info.num_frames < expected.num_frames:
            raise ArlonError(
                f"{args.video} has {info.num_frames} frames, its truth {expected.num_frames}"
            )
    else:
        expected = Expected.from_timeline(timeline, info.num_frames, info.height, info.width)
    frames = tqdm(iter_frames(args.video), total=expected.num_frames, desc="score", unit="frame")
    emit_json(score_video(frames, expected).report(), args.out)


def _add_dataset(sub) -> None:
    p = sub.add_parser(
        "dataset",
        help="write a data set of clips and episodes with a CSV manifest",
        description="Write short clips (one caption each) and episodes (caption changes) as "
        "mp4 + ground-truth json, and an Open-Sora-style manifest DIR/manifest.csv "
        "(path,text,num_frames,height,width,fps,truth). Re-running skips finished videos. The "
        "defaults are the data set the embedded model trained on (`arlon recipe shapes-tiny`): "
        "many scenes rather than many frames of a few, which an AR learns by heart.",
    )
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--clips", type=count, default=12000, help="short clips (default 12000)")
    p.add_argument("--clip-frames", type=positive_int, default=33, help="frames per clip (33)")
    p.add_argument("--episodes", type=count, default=1200, help="episodes (default 1200)")
    p.add_argument("--frames", type=positive_int, default=300, help="frames per episode (300)")
    p.add_argument("--seed", type=seed, default=0, help="base seed (default 0)")
    p.add_argument(
        "--delta-captions",
        type=share,
        default=0.5,
        help="the share of an episode's later captions that state only the change ('the circle "
        "turns blue'), as people write a story; the others describe the whole scene (default 0.5)",
    )
    _add_size_args(p)
    p.set_defaults(run=run_dataset)


def run_dataset(args: argparse.Namespace) -> None:
    check_size(args.height, args.width)
    from arlon.data.world_dataset import DatasetSettings, write_dataset

    fields = ("out", "clips", "clip_frames", "episodes", "frames", "seed", "height", "width", "fps")
    fields += ("delta_captions",)
    manifest = write_dataset(DatasetSettings(**{k: getattr(args, k) for k in fields}))
    print(f"wrote {args.clips + args.episodes} videos and {manifest}")
