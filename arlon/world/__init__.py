"""The shapes world: captioned procedural videos with per-frame ground truth, and their judge.

`vocab` (palette, shapes, motions, words) -> `scene` (specs and states) -> `captions` (wording and
parsing) -> `simulate` (episodes and events) -> `render` (frames) -> `detect` (frames back to states)
-> `metrics` (how well a video shows its captions).
"""
