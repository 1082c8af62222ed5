"""A timeline as the models read it: each prompt that states only a change, told as the whole scene.

A person directs a story by what changes: "a red circle moves right on a black background", then
"the circle turns blue". The AR, drawing from its own history, told only the change, loses the
scene the change leaves unsaid (the embedded model drew 19.6% of the `stories` suite's objects;
reading each change as the whole scene, 55.5%: docs/RESULTS.md). So the pipeline reads such a
prompt as the scene it asks for, in the world's canonical words:

    whole_scenes(Timeline([(0, "a red circle moves right on a black background"),
                           (120, "the circle turns blue")]))
    # ((0, "a red circle moves right on a black background"),
    #  (120, "A blue circle moves right on a black background"))

Whole-scene prompts are read as written. Rewriting stops at the first prompt that is not the
world's (a word no caption uses, a change the world cannot make): that prompt and those after it
are read as written, since the scene before them is no longer known. A prompt's reading depends
only on the prompts before it, so a prompt directed while a video is made changes nothing already
drawn, and the timeline recorded regenerates the same video.
"""

from __future__ import annotations

import functools

import numpy as np

from arlon.errors import ArlonError
from arlon.timeline import Timeline
from arlon.world.captions import apply_change, describe, parse_caption, unknown_words


@functools.lru_cache(maxsize=64)
def whole_scenes(timeline: Timeline) -> Timeline:
    """`timeline` with each in-world prompt that states only a change replaced by the whole scene
    it asks for (see the module docstring)."""
    read, scene = [], None
    for i, (start, prompt) in enumerate(timeline):
        try:
            if unknown_words(prompt):
                raise ArlonError(f"{prompt!r} is not in the world's words")
            changed = None if scene is None else apply_change(scene, prompt)
            scene = parse_caption(prompt) if changed is None else changed
        except ArlonError:
            return Timeline([*read, *timeline[i:]])
        # `describe` draws no words in the canonical wording: the generator only satisfies it
        text = prompt if changed is None else describe(scene, np.random.default_rng(0), "canonical")
        read.append((start, text))
    return Timeline(read)
