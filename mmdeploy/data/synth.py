"""A synthetic audio-video dataset that reproduces modality imbalance, written as real H.264 + AAC .mp4.

Every clip: 2 s, 64x64 px H.264 (yuv420p) at 12 fps + 16 kHz mono AAC, one track each.
Each class is a pair (sound, shape):
- Sound (easy cue): a tone pattern (hum 220 Hz, whistle 2.4 kHz, rising or falling sweep, 4 Hz beeps,
  warble, trill, chirps, high 5 kHz, buzz, pings, two-tone chord), frequencies jittered +-8 %, random
  phase and timing, 0-3 label-free blips at random pitches, white noise at an SNR of -6..+6 dB. It is
  a bright line in a log-mel spectrogram: learnt in 2-3 epochs.
- Shape (slow cue): one bright shape (circle, square, triangle, plus, ring, diamond, frame, cross,
  bar, moon; radius 8-13 px, random near-white tint) drifting in a straight line over a darker random
  colour gradient, with 2-4 darker clutter lines (half of them drawn over the shape), 4-9 moving
  coloured dots and per-pixel Gaussian noise (sigma 0.03-0.10). Colour, position and motion carry no
  label information; only the outline does, and a CNN needs many more epochs (and overfits) to learn it.
Classes come in pairs (2k, 2k+1): even pairs share the sound and differ only by shape (only video
separates them), odd pairs share the shape and differ only by sound (only audio separates them).
With 8 classes that is 6 sounds and 6 shapes, so audio alone and video alone each top out at 75 %
and only a model that fuses both can go beyond. Because the audio cue is learnt first, plain joint
training fits the training set from audio (plus memorised video) and under-trains the video encoder:
the modality imbalance that MLB corrects.

Knobs of `generate`: clips (total, spread evenly over classes), seed (determines everything: pixels,
samples, labels, splits, and every file's bytes for a given PyAV/FFmpeg build; the manifest records each
clip's SHA-256), classes (2-12), size (frame px), fps, seconds, sample_rate, workers (process
pool). Difficulty lives in the module constants below (AUDIO_SNR_DB, VIDEO_NOISE, CLUTTER_*,
SHAPE_RADIUS, DARK/BRIGHT). Two knobs show where balancing helps and where it does not:
`audio_snr_db` shifts the audio SNR range (+6 dB: the audio cue is even stronger than the video cue, more
imbalance; -6 dB: weaker, closer to balanced) and `label_noise` replaces that fraction of the train
split's labels by another class (val and test stay clean; the clips are unchanged). At 0 and 0 the bytes
are those of the plain generator. Splits: 70/15/15 per class (stratified); leftover val/test clips go round
the classes, so even tiny sets (3 clips per class) get all three splits.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from mmdeploy.data.manifest import Item, file_sha256, write_manifest
from mmdeploy.data.writer import CONTAINER_OPTIONS, encoder_options, video_frame
from mmdeploy.errors import ConfigError
from mmdeploy.settings import cpu_count

SOUNDS = ("hum", "whistle", "rise", "fall", "beep", "warble", "trill", "chirps", "high", "buzz", "ping", "duo")
SHAPES = ("circle", "square", "triangle", "plus", "ring", "diamond", "frame", "cross", "bar", "moon")
AUDIO_SNR_DB = (-6.0, 6.0)
VIDEO_NOISE = (0.03, 0.10)
CLUTTER_LINES = (2, 5)
CLUTTER_DOTS = (4, 10)
SHAPE_RADIUS = (8.0, 13.0)
DARK, BRIGHT = 0.55, 0.75  # background and clutter colours stay below DARK, the shape above BRIGHT
SPLIT_FRACTIONS = {"val": 0.15, "test": 0.15}


@dataclass(frozen=True)
class ClassCue:
    name: str
    sound: str
    shape: str


def class_table(classes: int) -> list[ClassCue]:
    """Class i's (sound, shape): pair i // 2 shares its sound when even, its shape when odd."""
    if not 2 <= classes <= 12:
        raise ConfigError(f"synth classes: {classes} is out of range; choose 2 to 12")
    sounds, shapes = iter(SOUNDS), iter(SHAPES)
    table: list[ClassCue] = []
    for first in range(0, classes, 2):
        members = min(2, classes - first)
        if members == 1:
            pairs = [(next(sounds), next(shapes))]
        elif (first // 2) % 2 == 0:
            sound = next(sounds)
            pairs = [(sound, next(shapes)) for _ in range(2)]
        else:
            shape = next(shapes)
            pairs = [(next(sounds), shape) for _ in range(2)]
        table += [ClassCue(f"{s}-{v}", s, v) for s, v in pairs]
    return table


# ---- audio -----------------------------------------------------------------------------------
def _sound(kind: str, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One tone pattern, unit peak; frequencies jittered by +-8 %, timing by a random phase."""
    j = rng.uniform(0.92, 1.08)
    dur = t[-1] + t[1]
    shift = rng.uniform(0, 1)
    gate = np.ones_like(t)
    if kind == "hum":
        freq = np.full_like(t, 220 * j)
    elif kind == "whistle":
        freq = np.full_like(t, 2400 * j)
    elif kind == "rise":
        freq = j * (400 + 2400 * t / dur)
    elif kind == "fall":
        freq = j * (2800 - 2400 * t / dur)
    elif kind == "beep":
        freq = np.full_like(t, 1000 * j)
        gate = ((t * 4 + shift) % 1 < 0.5).astype(t.dtype)
    elif kind == "warble":
        freq = j * (900 + 300 * np.sin(2 * np.pi * 5 * t + 6.28 * shift))
    elif kind == "trill":
        freq = j * np.where((t * 4 + shift) % 1 < 0.5, 600, 1600)
    elif kind == "chirps":
        freq = j * (800 + 2400 * ((t * 2 + shift) % 1))
    elif kind == "high":
        freq = np.full_like(t, 5000 * j)
    elif kind == "buzz":
        freq = np.full_like(t, 140 * j)
    elif kind == "ping":
        freq = np.full_like(t, 1800 * j)
        gate = np.exp(-8 * ((t * 2 + shift) % 1))
    elif kind == "duo":
        phase = 2 * np.pi * rng.uniform(0, 1, 2)
        return 0.5 * (np.sin(2 * np.pi * 500 * j * t + phase[0]) + np.sin(2 * np.pi * 1300 * j * t + phase[1]))
    else:
        raise ValueError(kind)
    phase = 2 * np.pi * np.cumsum(freq) * (t[1] - t[0]) + rng.uniform(0, 2 * np.pi)
    wave = np.sign(np.sin(phase)) * 0.6 if kind == "buzz" else np.sin(phase)
    return wave * gate


def render_audio(sound: str, seconds: float, sample_rate: int, rng: np.random.Generator,
                 snr_shift_db: float = 0.0) -> np.ndarray:
    """Tone pattern + distractor blips + white noise at a random SNR; float32 in [-1, 1]."""
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    signal = _sound(sound, t, rng)
    for _ in range(rng.integers(0, 4)):  # short blips at random pitches: label-free distractors
        at, width = rng.uniform(0, seconds - 0.1), rng.uniform(0.03, 0.08)
        blip = (t >= at) & (t < at + width)
        signal[blip] += 0.7 * np.sin(2 * np.pi * rng.uniform(300, 6000) * t[blip])
    snr = 10 ** ((rng.uniform(*AUDIO_SNR_DB) + snr_shift_db) / 10)
    noise = rng.standard_normal(n) * np.sqrt(np.mean(signal ** 2) / snr)
    mix = signal + noise
    return (mix * rng.uniform(0.3, 0.8) / np.abs(mix).max()).astype(np.float32)


# ---- video -----------------------------------------------------------------------------------
def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-radius shape; dx, dy are pixel offsets divided by the radius."""
    d = np.hypot(dx, dy)
    box = np.maximum(np.abs(dx), np.abs(dy))
    masks = {
        "circle": lambda: d <= 1,
        "square": lambda: box <= 0.85,
        "triangle": lambda: (dy <= 0.8) & (dy >= -1) & (np.abs(dx) <= (dy + 1) * 0.55),
        "plus": lambda: ((np.abs(dx) <= 0.3) | (np.abs(dy) <= 0.3)) & (box <= 1),
        "ring": lambda: (d <= 1) & (d >= 0.55),
        "diamond": lambda: np.abs(dx) + np.abs(dy) <= 1.1,
        "frame": lambda: (box <= 0.9) & (box >= 0.55),
        "cross": lambda: ((np.abs(dx - dy) <= 0.4) | (np.abs(dx + dy) <= 0.4)) & (box <= 0.9),
        "bar": lambda: (np.abs(dy) <= 0.35) & (np.abs(dx) <= 1),
        "moon": lambda: (d <= 1) & (np.hypot(dx - 0.5, dy) >= 0.75),
    }
    return masks[shape]()


def _segment_mask(yy: np.ndarray, xx: np.ndarray, p: np.ndarray, q: np.ndarray, width: float) -> np.ndarray:
    """Pixels within width/2 of the segment p-q (points as (x, y))."""
    v = q - p
    s = np.clip(((xx - p[0]) * v[0] + (yy - p[1]) * v[1]) / max(float(v @ v), 1e-9), 0, 1)
    return np.hypot(xx - p[0] - s * v[0], yy - p[1] - s * v[1]) <= width / 2


def render_video(shape: str, frames: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [frames, size, size, 3]: the shape drifting over a gradient, clutter lines, dots, noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c0, c1 = rng.uniform(0, DARK, 3), rng.uniform(0, DARK, 3)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = ((xx * np.cos(angle) + yy * np.sin(angle)) / size + 1) / 2
    background = c0 * (1 - ramp[..., None]) + c1 * ramp[..., None]
    lines = []
    for _ in range(rng.integers(*CLUTTER_LINES)):
        p, q = rng.uniform(0, size, 2), rng.uniform(0, size, 2)
        lines.append((_segment_mask(yy, xx, p, q, rng.uniform(1, 2.5)), rng.uniform(0, DARK, 3)))
    colour = rng.uniform(BRIGHT, 1, 3)
    radius = rng.uniform(*SHAPE_RADIUS) * size / 64
    margin = radius + 1
    start, end = rng.uniform(margin, size - margin, 2), rng.uniform(margin, size - margin, 2)
    dots = rng.uniform(0, size, (rng.integers(*CLUTTER_DOTS), 2))
    drift = rng.normal(0, 1.5, dots.shape)
    noise = rng.uniform(*VIDEO_NOISE)
    video = np.empty((frames, size, size, 3), np.uint8)
    for i in range(frames):
        img = background.copy()
        for mask, col in lines[: len(lines) // 2]:
            img[mask] = col
        cx, cy = start + (end - start) * i / max(frames - 1, 1)
        img[_shape_mask(shape, (xx - cx) / radius, (yy - cy) / radius)] = colour
        for mask, col in lines[len(lines) // 2:]:  # the rest of the clutter occludes the shape
            img[mask] = col
        for x, y in dots + drift * i:
            img[(np.abs(xx - x) <= 1.5) & (np.abs(yy - y) <= 1.5)] = rng.uniform(0, 1, 3)
        img += rng.normal(0, noise, img.shape)
        video[i] = (np.clip(img, 0, 1) * 255).astype(np.uint8)
    return video


# ---- files -----------------------------------------------------------------------------------
def write_mp4(path: Path, video: np.ndarray, fps: int, audio: np.ndarray, sample_rate: int) -> None:
    """One H.264 (yuv420p) video track and one mono AAC track, byte-reproducible (the same arrays give the
    same file); written to a temp name, then renamed."""
    import av

    tmp = path.with_name(path.name + ".part")
    with av.open(str(tmp), "w", format="mp4", options=CONTAINER_OPTIONS) as out:
        # one thread per clip (the process pool parallelises clips); byte-reproducible: see data/writer.py
        vs = out.add_stream("libx264", rate=fps,
                            options=encoder_options("libx264", {"crf": "18", "preset": "veryfast"}))
        vs.width, vs.height, vs.pix_fmt = video.shape[2], video.shape[1], "yuv420p"
        ast = out.add_stream("aac", rate=sample_rate, layout="mono", options=encoder_options("aac"))
        ast.bit_rate = 64000
        for i, rgb in enumerate(video):
            frame = video_frame(rgb)
            frame.pts = i
            out.mux(vs.encode(frame))
        out.mux(vs.encode())
        frame = av.AudioFrame.from_ndarray(audio[None], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = sample_rate, 0
        out.mux(ast.encode(frame))
        out.mux(ast.encode())
    os.replace(tmp, path)


@dataclass(frozen=True)
class _Job:
    path: Path
    cue: ClassCue
    seed: int
    index: int
    size: int
    fps: int
    seconds: float
    sample_rate: int
    audio_snr_db: float = 0.0


def _make_clip(job: _Job) -> str:
    """Render and write one clip; return its SHA-256."""
    rng = np.random.default_rng([job.seed, job.index])
    video = render_video(job.cue.shape, int(round(job.fps * job.seconds)), job.size, rng)
    audio = render_audio(job.cue.sound, job.seconds, job.sample_rate, rng, job.audio_snr_db)
    write_mp4(job.path, video, job.fps, audio, job.sample_rate)
    return file_sha256(job.path)


def assign_splits(labels: list[int], seed: int) -> list[str]:
    """70/15/15 per class; leftover val/test clips go round the classes so totals match the fractions."""
    rng = np.random.default_rng([seed, 1_000_003])
    by_class: dict[int, list[int]] = {}
    for i, lab in enumerate(labels):
        by_class.setdefault(lab, []).append(i)
    classes = sorted(by_class)
    counts = {c: {k: int(len(by_class[c]) * f) for k, f in SPLIT_FRACTIONS.items()} for c in classes}
    order = [classes[i] for i in rng.permutation(len(classes))]
    turn = 0
    for split, frac in SPLIT_FRACTIONS.items():
        missing = int(round(len(labels) * frac)) - sum(counts[c][split] for c in classes)
        for _ in range(len(classes) * 2):
            if missing <= 0:
                break
            c = order[turn % len(order)]
            turn += 1
            if len(by_class[c]) - sum(counts[c].values()) > 1:  # keep a train clip in every class
                counts[c][split] += 1
                missing -= 1
    splits = [""] * len(labels)
    for c in classes:
        members = [by_class[c][i] for i in rng.permutation(len(by_class[c]))]
        n_val, n_test = counts[c]["val"], counts[c]["test"]
        for rank, i in enumerate(members):
            splits[i] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return splits


def noisy_labels(labels: list[int], splits: list[str], classes: int, fraction: float, seed: int) -> list[int]:
    """Each train label replaced, with probability `fraction`, by one of the other classes (uniformly);
    val and test labels untouched. Its own random stream: the clips do not change."""
    if fraction <= 0:
        return list(labels)
    rng = np.random.default_rng([seed, 2_000_003])
    out = []
    for label, split in zip(labels, splits):
        flip, other = rng.random() < fraction, int(rng.integers(classes - 1))
        out.append((label + 1 + other) % classes if split == "train" and flip else label)
    return out


def generate(out: str | Path, clips: int = 480, seed: int = 0, classes: int = 8, *, size: int = 64,
             fps: int = 12, seconds: float = 2.0, sample_rate: int = 16000, workers: int | None = None,
             audio_snr_db: float = 0.0, label_noise: float = 0.0) -> Path:
    """Write OUT/clips/*.mp4 and OUT/manifest.csv (+ classes file); return the manifest path."""
    table = class_table(classes)
    if not -30.0 <= audio_snr_db <= 30.0:
        raise ConfigError(f"synth audio_snr_db: {audio_snr_db} is out of range; choose -30 to 30 (dB added to the "
                          f"audio SNR range {AUDIO_SNR_DB})")
    if not 0.0 <= label_noise < 1.0:
        raise ConfigError(f"synth label_noise: {label_noise} must be in [0, 1) (fraction of train labels replaced)")
    if clips < classes:
        raise ConfigError(f"synth clips: {clips} is fewer than classes={classes}; ask for at least one per class")
    if size < 16 or size % 2:
        raise ConfigError(f"synth size: {size} must be even and >= 16 (H.264 yuv420p)")
    out = Path(out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    labels = [i % classes for i in range(clips)]
    jobs = [_Job(out / "clips" / f"{i:05d}_{table[lab].name}.mp4", table[lab], seed, i, size, fps, seconds,
                 sample_rate, float(audio_snr_db)) for i, lab in enumerate(labels)]
    workers = max(1, min(workers or cpu_count(), clips))
    if workers == 1:
        digests = [_make_clip(job) for job in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            digests = list(pool.map(_make_clip, jobs, chunksize=max(1, clips // (workers * 8))))
    splits = assign_splits(labels, seed)
    names = noisy_labels(labels, splits, classes, label_noise, seed)
    items = [Item(path=str(job.path), label=table[name].name, split=split, sha256=digest)
             for job, split, digest, name in zip(jobs, splits, digests, names)]
    return write_manifest(out / "manifest.csv", items, [c.name for c in table])
