"""The paper's claims, checked on whole generations, each with its numbers and a plain verdict.

    arlon eval claims runs/suite/short runs/suite/long-600 runs/suite/stories

The summaries are the `metrics.json` of `arlon eval --suite` runs; every number is end to end (the
teacher-forced `arlon eval dit`, an oracle, decides nothing here). Each mode at a step count is
taken at its best text guidance and strength (the highest object accuracy among those the suite ran;
a run from the AR's latent counts the denoising steps it took, `arlon@5:s0.6` three). A claim
is checked on every summary that has what it needs; it holds when it holds on all of them, and is
unchecked (None) when none has what it needs:

1. the DiT adds something: ARLON at 5 steps (or fewer, its best) has a higher object accuracy than
   AR-only, the AR's codes decoded without the DiT;
2. ARLON at 5 steps or fewer is at least as good as the baseline at 30 in object accuracy;
3. at equal steps, ARLON's dynamic degree is at least the baseline's, and its subject consistency is
   no more than 2 points below;
4. on videos of 600 frames or more ARLON drifts less: its drop from the first to the last quarter
   in object accuracy and in identity is no larger than the baseline's;
5. with caption changes, ARLON's median switch latency is no worse than the baseline's.
"""

from __future__ import annotations

import json
from pathlib import Path

from arlon.diffusion.rectified_flow import strength_steps
from arlon.errors import ArlonError

HEADLINE = "object_accuracy"


def read_summaries(folders: list[Path]) -> list[dict]:
    summaries = []
    for folder in folders:
        path = Path(folder) / "metrics.json"
        if not path.is_file():
            raise ArlonError(f"{folder} holds no metrics.json: run 'arlon eval --suite' into it")
        summaries.append(json.loads(path.read_text()))
    return summaries


def euler_steps(run: dict) -> int | None:
    """The denoising steps a run took: at a strength below 1 (from the AR's latent, the pipeline's
    default on coarse tokens) the last few of those it names (`arlon@5:s0.6`: 3)."""
    if run["steps"] is None:
        return None
    return strength_steps(run["steps"], run.get("strength") or 1.0)


def best_runs(summary: dict) -> dict[tuple[str, int | None], dict]:
    """`(mode, denoising steps) -> run` at the guidance and strength with the highest object
    accuracy."""
    best: dict[tuple[str, int | None], dict] = {}
    for run in summary["runs"]:
        key = (run["mode"], euler_steps(run))
        if key not in best or (run.get(HEADLINE) or 0) > (best[key].get(HEADLINE) or 0):
            best[key] = run
    return best


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _name(run: dict) -> str:
    if run["steps"] is None:
        return run["mode"]
    strength = run.get("strength") or 1.0
    start = "" if strength == 1 else f":s{strength:g}"
    return f"{run['mode']}@{run['steps']}{start} (g{run['guidance']:g})"


def arlon_at_few_steps(runs: dict) -> dict | None:
    """ARLON's best run at 5 steps or fewer."""
    few = [r for (m, s), r in runs.items() if m == "arlon" and s is not None and s <= 5]
    return max(few, key=lambda r: r.get(HEADLINE) or 0, default=None)


def _dit_adds(summaries: list[dict]) -> tuple[list[str], list[bool]]:
    evidence, verdicts = [], []
    for summary in summaries:
        runs = best_runs(summary)
        arlon, coarse = arlon_at_few_steps(runs), runs.get(("ar-only", None))
        if arlon is None or coarse is None or coarse.get(HEADLINE) is None:
            continue
        evidence.append(
            f"{summary['suite']}: {_name(arlon)} {pct(arlon[HEADLINE])} vs ar-only "
            f"{pct(coarse[HEADLINE])} object accuracy; shape {pct(arlon.get('shape'))} vs "
            f"{pct(coarse.get('shape'))}"
        )
        verdicts.append(arlon[HEADLINE] > coarse[HEADLINE])
    return evidence, verdicts


def _fewer_steps(summaries: list[dict]) -> tuple[list[str], list[bool]]:
    evidence, verdicts = [], []
    for summary in summaries:
        runs = best_runs(summary)
        arlon, base = arlon_at_few_steps(runs), runs.get(("baseline", 30))
        if arlon is None or base is None or base.get(HEADLINE) is None:
            continue
        evidence.append(
            f"{summary['suite']}: {_name(arlon)} {pct(arlon[HEADLINE])} vs {_name(base)} "
            f"{pct(base[HEADLINE])} object accuracy"
        )
        verdicts.append(arlon[HEADLINE] >= base[HEADLINE])
    return evidence, verdicts


def _pairs(summaries: list[dict], min_frames: int = 0):
    """`(suite name, ARLON's run, the baseline's run)` at every step count both modes ran."""
    for summary in summaries:
        if summary["frames"] < min_frames:
            continue
        runs = best_runs(summary)
        for mode, steps in sorted(k for k in runs if k[1] is not None):
            if mode == "arlon" and ("baseline", steps) in runs:
                yield summary["suite"], runs[mode, steps], runs["baseline", steps]


def _dynamics(summaries: list[dict]) -> tuple[list[str], list[bool]]:
    evidence, verdicts = [], []
    keys = ("dynamic_degree", "subject_consistency")
    for suite, a, b in _pairs(summaries):
        if any(r.get(k) is None for r in (a, b) for k in keys):
            continue
        evidence.append(
            f"{suite}, {_name(a)} vs {_name(b)}: dynamic degree {pct(a['dynamic_degree'])} vs "
            f"{pct(b['dynamic_degree'])}; subject consistency {pct(a['subject_consistency'])} "
            f"vs {pct(b['subject_consistency'])}"
        )
        verdicts.append(
            a["dynamic_degree"] >= b["dynamic_degree"]
            and a["subject_consistency"] >= b["subject_consistency"] - 0.02
        )
    return evidence, verdicts


def _drift(summaries: list[dict]) -> tuple[list[str], list[bool]]:
    evidence, verdicts = [], []
    keys = (HEADLINE, "identity")
    for suite, a, b in _pairs(summaries, min_frames=600):
        if any(r.get(f"{k}_{w}") is None for r in (a, b) for k in keys for w in ("early", "late")):
            continue
        drop = [{k: r[f"{k}_early"] - r[f"{k}_late"] for k in keys} for r in (a, b)]
        evidence.append(
            f"{suite}, {_name(a)} vs {_name(b)}: drop from the first to the last quarter, object "
            f"accuracy {100 * drop[0][HEADLINE]:+.1f} vs {100 * drop[1][HEADLINE]:+.1f} points, "
            f"identity {100 * drop[0]['identity']:+.1f} vs {100 * drop[1]['identity']:+.1f}"
        )
        verdicts.append(all(drop[0][k] <= drop[1][k] for k in keys))
    return evidence, verdicts


def _switches(summaries: list[dict]) -> tuple[list[str], list[bool]]:
    evidence, verdicts = [], []
    for suite, a, b in _pairs(summaries):
        if a.get("switch_latency_median") is None or b.get("switch_latency_median") is None:
            continue
        evidence.append(
            f"{suite}, {_name(a)} vs {_name(b)}: median switch latency "
            f"{a['switch_latency_median']:.0f} vs {b['switch_latency_median']:.0f} frames; "
            f"switches taken {pct(a.get('switched'))} vs {pct(b.get('switched'))}"
        )
        verdicts.append(a["switch_latency_median"] <= b["switch_latency_median"])
    return evidence, verdicts


CLAIMS = (
    ("The DiT improves on the AR's coarse video (ARLON at <= 5 steps vs AR-only)", _dit_adds),
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
    """`[{"claim", "evidence": [str, ...], "holds": bool | None}]`, one per claim; ARLON's numbers
    come first in each piece of evidence."""
    results = []
    for text, check in CLAIMS:
        evidence, verdicts = check(summaries)
        holds = all(verdicts) if verdicts else None
        results.append({"claim": text, "evidence": evidence, "holds": holds})
    return results


def markdown(claims: list[dict]) -> str:
    lines = ["| claim | numbers (ARLON first) | verdict |", "|---|---|---|"]
    for c in claims:
        verdict = {True: "holds", False: "does not hold", None: "not checked"}[c["holds"]]
        lines.append(f"| {c['claim']} | {'<br>'.join(c['evidence']) or '-'} | **{verdict}** |")
    return "\n".join(lines) + "\n"
