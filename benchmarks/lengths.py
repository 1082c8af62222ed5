"""Run a benchmark once per video length, each in a fresh process (peak resident memory is per
process), and report the ratio of the peaks (used by `ar.py`)."""

from __future__ import annotations

import json
import subprocess
import sys


def run_lengths(script: str, lengths: list[int], argv: list[str]) -> list[dict]:
    """`python script --child --frames N *argv` for each N; each prints one JSON line last."""
    results = []
    for frames in lengths:
        command = [sys.executable, script, "--child", "--frames", str(frames), *argv]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if len(results) > 1:
        ratio = results[-1]["peak_rss_mib"] / results[0]["peak_rss_mib"]
        print(json.dumps({"peak_ratio_longest_to_shortest": round(ratio, 3)}))
    return results
