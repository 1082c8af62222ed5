"""The paper's claims, checked on suite results, each with its numbers and a plain verdict.

    arlon eval claims runs/suite/short runs/suite/long-600 runs/suite/long-2400

The summaries are the `metrics.json` of `arlon eval --suite` runs that hold both modes. A claim is
checked on every summary that has what it needs (step counts, long videos, caption changes); it
holds when it holds on all of them, and is unchecked (None) when none has what it needs:

1. ARLON at 5 steps or fewer is at least as good as the baseline at 30: the mean of the world's
   quality metrics (attribute, motion, count, identity) of ARLON at some s <= 5 reaches the
   baseline's at 30;
2. at equal steps, ARLON's dynamic degree is at least the baseline's, and its subject consistency is
   no more than 2 points below;
3. on videos of 600 frames or more ARLON drifts less: its drop from the first to the last quarter
   in identity persistence and in attribute accuracy is no larger than the baseline's;
4. with caption changes, ARLON's median switch latency is no worse than the baseline's.
"""

from __future__ import annotations

import json
from pathlib import Path

from arlon.errors import ArlonError

QUALITY = ("attribute", "motion", "count", "identity")


def read_summaries(folders: list[Path]) -> list[dict]:
    summaries = []
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise ArlonError(f"{folder} holds no metrics.json: run 'arlon eval --suite' into it")
        summaries.append(json.loads(path.read_text()))
    return summaries


def _runs(summary: dict) -> dict[tuple[str, int], dict]:
    return {(r["mode"], r["steps"]): r for r in summary["runs"]}


def quality(run: dict) -> float | None:
    values = [run[k] for k in QUALITY if run.get(k) is not None]
    return sum(values) / len(values) if values else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _pairs(summaries: list[dict], min_frames: int = 0):
    """`(suite name, steps, ARLON's run, the baseline's run)` at every step count both modes ran."""
    for summary in summaries:
        if summary["frames"] < min_frames:
            continue
        runs = _runs(summary)
        for mode, steps in sorted(runs):
            if mode == "arlon" and ("baseline", steps) in runs:
                yield summary["suite"], steps, runs[mode, steps], runs["baseline", steps]


def _fewer_steps(summaries: list[dict]) -> tuple[list[str], list[bool]]:
    evidence, verdicts = [], []
    for summary in summaries:
        runs = _runs(summary)
        base = runs.get(("baseline", 30))
        few = sorted(s for m, s in runs if m == "arlon" and s <= 5)
        if base is None or not few or quality(base) is None:
            continue
        reached = [s for s in few if (quality(runs["arlon", s]) or 0) >= quality(base)]
        shown = max(few)
        evidence.append(
            f"{summary['suite']}: ARLON@{shown} {_pct(quality(runs['arlon', shown]))} vs "
            f"baseline@30 {_pct(quality(base))} (mean of {', '.join(QUALITY)}); "
            + (f"reached from {reached[0]} step(s)" if reached else "not reached at <= 5 steps")
        )
        verdicts.append(bool(reached))
    return evidence, verdicts


def _dynamics(summaries: list[dict]) -> tuple[list[str], list[bool]]:
    evidence, verdicts = [], []
    for suite, steps, a, b in _pairs(summaries):
        keys = ("dynamic_degree", "subject_consistency")
        if any(r.get(k) is None for r in (a, b) for k in keys):
            continue
        evidence.append(
            f"{suite} @{steps}: dynamic degree {_pct(a['dynamic_degree'])} vs "
            f"{_pct(b['dynamic_degree'])}; subject consistency "
            f"{_pct(a['subject_consistency'])} vs {_pct(b['subject_consistency'])}"
        )
        verdicts.append(
            a["dynamic_degree"] >= b["dynamic_degree"]
            and a["subject_consistency"] >= b["subject_consistency"] - 0.02
        )
    return evidence, verdicts


def _drift(summaries: list[dict]) -> tuple[list[str], list[bool]]:
    evidence, verdicts = [], []
    keys = ("identity", "attribute")
    for suite, steps, a, b in _pairs(summaries, min_frames=600):
        if any(r.get(f"{k}_{w}") is None for r in (a, b) for k in keys for w in ("early", "late")):
            continue
        drop = {
            m: {k: r[f"{k}_early"] - r[f"{k}_late"] for k in keys} for m, r in (("a", a), ("b", b))
        }
        evidence.append(
            f"{suite} @{steps}: drop early -> late quarter, identity "
            f"{100 * drop['a']['identity']:+.1f} vs {100 * drop['b']['identity']:+.1f} points, "
            f"attribute {100 * drop['a']['attribute']:+.1f} vs {100 * drop['b']['attribute']:+.1f}"
        )
        verdicts.append(all(drop["a"][k] <= drop["b"][k] for k in keys))
    return evidence, verdicts


def _switches(summaries: list[dict]) -> tuple[list[str], list[bool]]:
    evidence, verdicts = [], []
    for suite, steps, a, b in _pairs(summaries):
        if a.get("switch_latency_median") is None or b.get("switch_latency_median") is None:
            continue
        evidence.append(
            f"{suite} @{steps}: median switch latency {a['switch_latency_median']:.0f} vs "
            f"{b['switch_latency_median']:.0f} frames; switches taken {_pct(a.get('switched'))} "
            f"vs {_pct(b.get('switched'))}"
        )
        verdicts.append(a["switch_latency_median"] <= b["switch_latency_median"])
    return evidence, verdicts


CLAIMS = (
    ("ARLON at <= 5 steps is at least as good as the baseline at 30", _fewer_steps),
    (
        "ARLON's dynamic degree >= the baseline's at equal steps, subject consistency within "
        "2 points",
        _dynamics,
    ),
    ("On 600+ frame videos ARLON drifts less than the baseline", _drift),
    ("With a progressive timeline, ARLON switches no later than the baseline", _switches),
)


def check_claims(summaries: list[dict]) -> list[dict]:
    """`[{"claim", "evidence": [str, ...], "holds": bool | None}]` for the four claims; ARLON's
    numbers come first in each piece of evidence."""
    results = []
    for text, check in CLAIMS:
        evidence, verdicts = check(summaries)
        holds = all(verdicts) if verdicts else None
        results.append({"claim": text, "evidence": evidence, "holds": holds})
    return results


def markdown(claims: list[dict]) -> str:
    lines = ["| claim | numbers (ARLON vs baseline) | verdict |", "|---|---|---|"]
    for c in claims:
        verdict = {True: "holds", False: "does not hold", None: "not checked"}[c["holds"]]
        lines.append(f"| {c['claim']} | {'<br>'.join(c['evidence']) or '-'} | **{verdict}** |")
    return "\n".join(lines) + "\n"
