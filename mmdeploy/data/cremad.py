"""CREMA-D tree -> manifest: ROOT/VideoFlash/*.flv (+ ROOT/AudioWAV/*.wav), speaker-independent splits.

File names are `ActorID_Sentence_Emotion_Level` (e.g. 1001_DFA_ANG_XX); the label is the emotion code,
in the order the MLB code uses (NEU HAP SAD FEA DIS ANG). CREMA-D has no official split: actors are
assigned whole to train/val/test (seeded), so no speaker is in two splits; the group column holds the
actor. Audio comes from the 16 kHz WAV of the same name (audio_path) or from the FLV's own MP3 track.
"""
from __future__ import annotations

import re
from pathlib import Path

from mmdeploy.data.indexing import Index, Report, probe_all, require_dir, split_groups
from mmdeploy.data.manifest import Item
from mmdeploy.errors import ConfigError

CLASSES = ("NEU", "HAP", "SAD", "FEA", "DIS", "ANG")
SENTENCES = frozenset("IEO TIE IOM IWW TAI MTI IWL ITH DFA ITS TSI WSI".split())
LEVELS = frozenset(("LO", "MD", "HI", "XX"))
NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
LAYOUT = "the CREMA-D layout ROOT/VideoFlash/*.flv and ROOT/AudioWAV/*.wav"
AUDIO_SOURCES = ("wav", "flv")
# Files of the release that users of CREMA-D exclude (see training/README.md); skipped with a note.
KNOWN_FAULTY = {"1076_MTI_SAD_XX": "WAV without usable audio",
                "1064_IEO_DIS_MD": "a one-minute recording holding every emotion of the sentence"}


def parse_name(stem: str) -> tuple[str, str] | None:
    """'1001_DFA_ANG_XX' -> ('1001', 'ANG'); None for a name outside the CREMA-D convention."""
    m = NAME.match(stem)
    if not m or m[2] not in SENTENCES or m[3] not in CLASSES or m[4] not in LEVELS:
        return None
    return m[1], m[3]


def index_cremad(root: str | Path, *, seed: int = 0, ratios: tuple[float, float, float] = (0.7, 0.15, 0.15),
                 audio: str = "wav", min_seconds: float = 0.0, workers: int | None = None) -> Index:
    root = require_dir(root, LAYOUT)
    if audio not in AUDIO_SOURCES:
        raise ConfigError(f"--audio {audio!r}: choose wav (AudioWAV/*.wav) or flv (the FLV's own track)")
    video_dir, wav_dir = root / "VideoFlash", root / "AudioWAV"
    if not video_dir.is_dir():
        raise ConfigError(f"{root}: no VideoFlash/ folder; expected {LAYOUT} (git lfs clone of "
                          "CheyneyComputerScience/CREMA-D)")
    if audio == "wav" and not wav_dir.is_dir():
        raise ConfigError(f"{root}: no AudioWAV/ folder; fetch it or index with --audio flv")
    report = Report()
    clips: list[tuple[Path, Path | None, str, str]] = []  # flv, wav, actor, emotion
    for path in sorted(video_dir.iterdir()):
        if path.suffix.lower() != ".flv":
            report.note("not an .flv file, ignored", path.name)
            continue
        parsed = parse_name(path.stem)
        if parsed is None:
            report.problem("unexpected name", path.name)
            continue
        if path.stem in KNOWN_FAULTY:
            report.note("known faulty file of the release, skipped", f"{path.name} ({KNOWN_FAULTY[path.stem]})")
            continue
        wav = wav_dir / f"{path.stem}.wav" if audio == "wav" else None
        if wav is not None and not wav.is_file():
            report.problem("missing WAV", f"AudioWAV/{path.stem}.wav")
            continue
        clips.append((path, wav, *parsed))

    probed = probe_all([p for c in clips for p in c[:2] if p is not None], workers)
    kept: list[tuple[Path, Path | None, str, str]] = []
    for flv, wav, actor, emotion in clips:
        v = probed[str(flv)]
        a = probed[str(wav)] if wav is not None else v
        source = wav.name if wav is not None else flv.name
        if v.error:
            report.problem("unreadable FLV", f"{flv.name}: {v.error}")
        elif not v.video:
            report.problem("no video track", flv.name)
        elif a.error:
            report.problem("unreadable WAV", f"{source}: {a.error}")
        elif not a.audio:
            report.problem("no audio track", source)
        elif a.duration is not None and a.duration <= 0:
            report.problem("empty audio", source)
        elif a.duration is not None and a.duration < min_seconds:
            report.problem(f"shorter than {min_seconds:g} s", f"{source} ({a.duration:.2f} s)")
        else:
            kept.append((flv, wav, actor, emotion))

    split_of = split_groups((c[2] for c in kept), ratios, seed)
    items = [Item(path=str(flv), label=emotion, split=split_of[actor], group=actor,
                  audio_path=str(wav) if wav is not None else None)
             for flv, wav, actor, emotion in kept]
    return Index(items=items, classes=list(CLASSES), report=report)
