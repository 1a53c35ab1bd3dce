"""A long timeline file in `mmdeploy batch --engine ray`, spread over several decode tasks: planned (plan_batch, in
Ray tasks: jobs.plan_job in a decode process, the keyframe plan of the CLI's segment-parallel timeline,
media/keyframes.py), expanded into one input per segment (expand, at most one per decode task that can run at
once: coarsen), and each segment decoded bit-identical to the sequential decode (segment_windows: its video from
the keyframe before it, its audio from the file's start, jobs.audio_span_job). ray_engine.decode_batch runs
segment_windows; rows.Assembler puts a file's segments back in order in the driver.
"""
from __future__ import annotations

import json
from typing import Any, Iterator

from mmdeploy.batch.inputs import Job, Source
from mmdeploy.errors import reason
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.spec import ClipSpec

PLAN_BATCH = 16  # files per plan task


def plan_batch(texts: list[str], spec_json: str, window: float | None, hop: float | None,
               timeout: float | None) -> list[dict[str, Any]]:
    """Plan task: each timeline source's SegmentPlan, made in a decode process by pipeline.plan_windows (as the
    CLI's timeline), as {"segments": [[k0, k1], ...], "reason", "has_audio"}. A file that cannot be planned
    (bad, a crash, past the limit) is sequential with that reason: its decode then gives its error row as before."""
    from mmdeploy.pipeline import plan_windows

    spec = ClipSpec.from_json(spec_json)
    out = []
    for text in texts:
        path = json.loads(text)["path"]
        try:  # workers=2: segments of SEGMENT_SECONDS (at least two); expand merges them to the tasks at once
            plan = plan_windows(path, spec, window, hop, 2, timeout)
            out.append({"segments": [list(s) for s in plan.segments] if plan.split else [],
                        "reason": plan.reason, "has_audio": plan.has_audio})
        except Exception as exc:  # noqa: BLE001 - this file is decoded in one pass, which reports it
            out.append({"segments": [], "reason": reason(exc), "has_audio": True})
    return out


def coarsen(spans: list[tuple[int, int]], most: int) -> list[tuple[int, int]]:
    """Adjacent [k0, k1) spans merged into at most `most` (each cut the span start nearest an even share of the
    windows). A merged span is still exact: it starts where one of the plan's did, after a keyframe."""
    spans = [tuple(s) for s in spans]
    if len(spans) <= max(most, 1):
        return spans
    first, last = spans[0][0], spans[-1][1]
    starts = [k0 for k0, _ in spans[1:]]
    cuts = sorted({min(starts, key=lambda k: abs(k - (first + i * (last - first) / most))) for i in range(1, most)})
    bounds = [first, *cuts, last]
    return list(zip(bounds, bounds[1:]))


def expand(src: Source, plan: dict[str, Any], most: int) -> list[dict[str, Any]]:
    """A timeline source and its plan (plan_batch) -> its decode inputs: the source alone (one task, one pass), or
    one per segment, at most `most` (the decode tasks that can run at once), each with {index, of, span, audio}.
    Every input carries `decoding`, the CLI timeline's record (SegmentPlan.summary): segments, workers, or why
    one pass."""
    spans = coarsen(plan["segments"], most)
    if len(spans) < 2:
        return [{**src.__dict__, "decoding": {"segments": 1, "workers": 1,
                                              "sequential": plan["reason"] or "one decode task"}}]
    decoding = {"segments": len(spans), "workers": len(spans), "sequential": None}
    return [{**src.__dict__, "decoding": decoding,
             "segment": {"index": i, "of": len(spans), "span": list(span), "audio": plan["has_audio"]}}
            for i, span in enumerate(spans)]


def plan_sources(todo: list[Source], job: Job, spec_json: str, decoders: int) -> list[dict[str, Any]]:
    """Timeline sources -> decode inputs (expand), planned in Ray tasks of PLAN_BATCH files (all of them before
    the decode starts: a plan reads the container index and a few packets, milliseconds a file). With one
    decode task at a time no file is split (nothing would run beside its segments)."""
    import ray

    if decoders < 2:
        return [{**s.__dict__, "decoding": {"segments": 1, "workers": 1, "sequential": "one decode worker"}}
                for s in todo]
    task = ray.remote(plan_batch).options(num_cpus=1, max_retries=1)
    chunks = [todo[i:i + PLAN_BATCH] for i in range(0, len(todo), PLAN_BATCH)]
    refs = [task.remote([json.dumps(s.__dict__) for s in chunk], spec_json, job.window, job.hop, job.timeout)
            for chunk in chunks]
    out: list[dict[str, Any]] = []
    for chunk, ref in zip(chunks, refs):
        try:
            plans = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - its worker died twice: these files are decoded in one pass
            plans = [{"segments": [], "reason": f"not planned ({type(exc).__name__})", "has_audio": True}] * len(chunk)
        for s, plan in zip(chunk, plans):
            out.extend(expand(s, plan, decoders))
    return out


def segment_windows(path: str, spec, window: float, hop: float, timeout: float | None, options: DecodeOptions,
                    segment: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """One segment's window items, bit-identical to the sequential decode's: its video (jobs.window_jobs with
    `span`, from the keyframe before it) and its audio (audio_span_job, read ahead: its pass from the file's start
    runs beside the video's; memory: one segment's audio items, small beside its video) in two decode processes
    at once, each window within `timeout`; closing stops both."""
    from mmdeploy import isolate
    from mmdeploy.jobs import audio_span_job, window_jobs
    from mmdeploy.segments import merge_windows, read_ahead

    span = tuple(segment["span"])
    video = isolate.IsolatedWindows(path, window_jobs, (path, spec, window, hop, options, span, ("video",)), timeout)
    audio = isolate.IsolatedWindows(path, audio_span_job, (path, spec, window, hop, options, span), timeout) \
        if segment.get("audio", True) else None
    try:
        yield from merge_windows(read_ahead(a for a in audio if a is not None) if audio else iter(()), video)
    finally:
        video.close()
        if audio is not None:
            audio.close()
