"""Text encoder: load time, encoding speed, and whether sentence similarity tracks meaning.

    .venv/bin/python benchmarks/text_encoder.py

Prints the cosine similarity (mean-pooled, the sentence-transformers way) of paraphrases and of
contradicting captions; the issue asks that paraphrases score higher.
"""

from __future__ import annotations

import json
import time

import numpy as np

from arlon.models.text_encoder import TextEncoder
from arlon.world.captions import describe
from arlon.world.simulate import random_spec

PAIRS = {
    "paraphrase": ("a red circle moves left", "a crimson disc drifts to the left"),
    "contradiction": ("a red circle moves left", "a red circle moves right"),
    "contradiction (paraphrased wording)": (
        "a crimson disc drifts to the left",
        "a crimson disc drifts to the right",
    ),
    "other object": ("a red circle moves left", "a blue square moves left"),
}


def main() -> None:
    start = time.perf_counter()
    encoder = TextEncoder.from_pretrained()
    load = time.perf_counter() - start
    similarity = {}
    for name, (a, b) in PAIRS.items():
        ea, eb = encoder.pooled([a, b])
        similarity[name] = round(float(ea @ eb), 3)
    rng = np.random.default_rng(0)
    captions = [describe(random_spec(rng), rng) for _ in range(256)]
    encoder = TextEncoder.from_pretrained(cache_size=0)
    start = time.perf_counter()
    for i in range(0, len(captions), 32):
        encoder.encode(captions[i : i + 32])
    speed = len(captions) / (time.perf_counter() - start)
    print(
        json.dumps(
            {
                "load_seconds": round(load, 2),
                "captions_per_second": round(speed),
                "cosine": similarity,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
