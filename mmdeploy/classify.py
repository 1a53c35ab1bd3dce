"""Files -> predictions, on the pipeline (mmdeploy/pipeline.py): one window per file, or a timeline of windows.

One result per file (results.ClassifyResult; one JSON line with `mmdeploy classify --json`):

    file, window{start, end}, label, score, probs{class: p}, top_k[{label, score}], modalities[used],
    per_modality{audio|video: {label, score, agrees, probs}}, backend, timings_ms{decode, features, infer}
    + windows[{start, end, label, score}]   (timeline only)

`window` is the part of the file that was classified, in seconds from its start (a 30-s file without
--window: {0, 2} for a 2-s model; a timeline: first window's start to last window's end).
A bad file gives {"file": ..., "error": reason} instead; callers print it and carry on. timings_ms.infer
is the file's share of its batch.

Without a window, a file is classified from its first `spec.window_seconds` (the window training uses).
Decoding is untrusted work: by default it runs in worker processes (`mmdeploy.isolate`), so a decoder crash
or hang costs only that file: one file or many, timelines too (`isolated=False` decodes here, for tests and
trusted data). Many files: jobs spread over the workers; inference runs in batches here; results come out
in completion order.

Timeline: a worker streams consecutive windows' features; windows are classified in batches while the next
ones decode (pipeline.window_batches); memory is bounded whatever the file length. It yields one dict per
window ({file, start, end, label, score, probs, modalities}) as soon as its batch is done, then the file's
result (pipeline.Timeline). A window longer than the model's has its frames spread over it and its audio cut
to the model's length (features.fit_length); a shorter one is tiled or padded.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from mmdeploy import pipeline
from mmdeploy.jobs import FAST
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.pipeline import BATCH
from mmdeploy.settings import DECODE_TIMEOUT_S


def classify_file(path: str | Path, predictor, top_k: int = 5, timeout: float | None = DECODE_TIMEOUT_S,
                  isolated: bool = True, options: DecodeOptions = FAST) -> dict[str, Any]:
    """One file (its first spec window) -> the result dict. Raises MediaError for a bad file, and for a
    decoder crash or a decode longer than `timeout` s."""
    item = pipeline.decode_file(path, predictor.spec, timeout, isolated, options)
    return pipeline.classify_items([item], predictor, top_k)[0]


def classify_files(paths: list[Path], predictor, top_k: int = 5, workers: int | None = None,
                   batch_size: int = BATCH, job: Callable | None = None, timeout: float | None = DECODE_TIMEOUT_S,
                   isolated: bool = True, options: DecodeOptions = FAST) -> Iterator[dict[str, Any]]:
    """Many files -> results (or {"file", "error"}) in completion order (see pipeline.decode_files for
    `workers`, `job`, `timeout`); whatever is decoded is classified as one batch."""
    for ready in pipeline.decode_files(paths, predictor.spec, workers, timeout, job, isolated, options):
        good = []
        for item in ready:
            if "error" in item:
                yield item
            else:
                good.append(item)
        for i in range(0, len(good), batch_size):
            yield from pipeline.classify_items(good[i:i + batch_size], predictor, top_k)


def classify_timeline(path: str | Path, predictor, window: float | None = None, hop: float | None = None,
                      top_k: int = 5, batch_size: int = BATCH, timeout: float | None = DECODE_TIMEOUT_S,
                      isolated: bool = True, options: DecodeOptions = FAST,
                      workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Consecutive windows of one file -> one dict per window as its batch is done, then the file's
    result with `windows` and `decoding` (segments, workers, or why it was decoded in one pass). Raises
    MediaError for a bad file (before or during streaming), a decoder crash or a window that takes longer
    than `timeout` s to decode (isolated: in worker processes, killed as soon as this generator is closed).
    `workers` decode processes share a long file, cut at keyframes (pipeline.plan_windows; default: every
    core; 1: one sequential pass); the windows are the same either way, bit for bit."""
    spec = predictor.spec
    window = window or spec.window_seconds
    hop = hop or window
    timeline = pipeline.Timeline(str(path), predictor, top_k)
    plan = pipeline.plan_windows(path, spec, window, hop, workers, timeout, isolated)
    timeline.decoding = plan.summary()
    items = pipeline.decode_windows(path, spec, window, hop, timeout, isolated, options, plan=plan)
    with contextlib.closing(pipeline.window_batches(items, batch_size)) as batches:
        for batch in batches:
            yield from timeline.classify(batch)
    yield timeline.result()


# ---- text output ----------------------------------------------------------------------------
def format_result(result: dict[str, Any]) -> str:
    """A result dict -> a few readable lines (label, top-k, each modality's opinion, timings)."""
    w = result.get("window")
    span = f"  window {w['start']:.2f}-{w['end']:.2f}s" if w else ""
    lines = [f"{result['file']}: {result['label']} {result['score']:.3f}  "
             f"[{'+'.join(result['modalities'])}, {result['backend']}]{span}",
             "  top: " + ", ".join(f"{t['label']} {t['score']:.3f}" for t in result["top_k"])]
    for m, v in result["per_modality"].items():
        lines.append(f"  {m}: {v['label']} {v['score']:.3f} ({'agrees' if v['agrees'] else 'disagrees'})")
    t = result["timings_ms"]
    lines.append(f"  ms: decode {t['decode']:.1f}, features {t['features']:.1f}, infer {t['infer']:.1f}")
    return "\n".join(lines)


def format_window(row: dict[str, Any]) -> str:
    return f"{row['file']} {row['start']:8.2f}-{row['end']:.2f}s  {row['label']} {row['score']:.3f}"
