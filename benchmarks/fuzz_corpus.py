"""Fuzz `mmdeploy classify` with byte-mutated copies of real clips: no traceback, no signal, no hang.

    python benchmarks/fuzz_corpus.py make --out /tmp/fuzz [--count 1000] [--seed 0]
    python benchmarks/fuzz_corpus.py run --corpus /tmp/fuzz --model RUN [--single 50] [--timeline 100]

`make` writes COUNT files, deterministically: file i is mutation recipe i % len(RECIPES) applied to seed
clip (i // len(RECIPES)) % len(SEEDS) of ../shared/media with random.Random(f"{seed}:{i}"), so any file
can be rebuilt alone (`mutate(i)`). Recipes: byte flips (anywhere, in the header, the 256-byte flip that
crashes FFmpeg's H.264/AAC decoders), truncation, truncation then flips, zeroed header, a duplicated chunk,
a chunk of another clip spliced in (MPEG-PS into FLV among them), garbage after a valid head. Files go in
batches of 100 (batch_00/, batch_01/, ...), outside the repository. Beside them, `late_streams/`: FLVs whose
stream list grows after the header (a subtitle stream at 1.5 s or later, audio that starts late; `LATE`,
`late_stream(j)`), which PyAV 18's demuxer answered with IndexError at the end of the file.

`run` classifies every batch folder with one CLI call (`--json`, the default workers), a sample of
files one CLI call each, and a sample as timelines (one CLI call, `--window 2 --hop 1`), and counts per call: exit code (0 or 2 allowed), signals (negative code),
hangs (no exit in --timeout s), tracebacks on stderr, and whether every input appears exactly once in the
JSON lines. It prints one table and the bad cases; it exits 1 if any call broke a rule.
"""
from __future__ import annotations

import argparse
import collections
import json
import random
import subprocess
import sys
import time
from pathlib import Path

MEDIA = Path(__file__).resolve().parents[2] / "shared" / "media"
SEEDS = ["cremad_1001_DFA_ANG_XX.flv", "grid_s1_bbaf2n.mpg", "bbb_h264_aac51.mp4",
         "tears_of_steel_vp8_vorbis_mono.webm", "iphone_rot180_audiofirst.mov", "derived_nasa_h264_aac.mkv",
         "vp9_opus_no_duration.webm", "derived_iphone_h264_pcm.mov", "espeak_en_speech.wav",
         "nasa_13013_multistream.mp4", "bbb_h264_100subtitle_tracks_noaudio.mp4", "screencast_vp8_noaudio.webm"]
BATCH = 100


def flip(data: bytearray, n: int, rng: random.Random, lo: int = 0, hi: int | None = None) -> bytearray:
    """XOR n random bytes in [lo, hi) with random non-zero values (the issue's "flipped bytes")."""
    hi = len(data) if hi is None else min(hi, len(data))
    for _ in range(n):
        i = rng.randrange(lo, hi)
        data[i] ^= rng.randrange(1, 256)
    return data


def _chunk(data: bytes, rng: random.Random, most: int = 65536) -> bytes:
    a = rng.randrange(len(data))
    return data[a:a + rng.randint(16, most)]


def _cut(data: bytes, rng: random.Random) -> int:
    return rng.randint(1, len(data) - 1)


def r_flip(data, rng, other):
    return flip(bytearray(data), rng.choice([1, 8, 64, 256, 1024]), rng)


def r_flip256(data, rng, other):  # the recipe that makes bbb_h264_aac51.mp4 crash FFmpeg (seeds 5, 18, 19)
    return flip(bytearray(data), 256, rng)


def r_flip_head(data, rng, other):
    return flip(bytearray(data), rng.choice([1, 4, 16, 64]), rng, 0, 4096)


def r_truncate(data, rng, other):
    return data[:_cut(data, rng)]


def r_truncate_flip(data, rng, other):
    return flip(bytearray(data[:_cut(data, rng)]), rng.choice([8, 64, 256]), rng)


def r_zero_head(data, rng, other):
    out = bytearray(data)
    a = rng.choice([0, 0, rng.randrange(min(len(data), 65536))])
    n = rng.choice([4, 16, 256, 4096])
    out[a:a + n] = bytes(len(out[a:a + n]))
    return out


def r_duplicate(data, rng, other):
    chunk, at = _chunk(data, rng), _cut(data, rng)
    return data[:at] + chunk * rng.randint(1, 3) + data[at:]


def r_splice(data, rng, other):
    at = _cut(data, rng)
    return data[:at] + _chunk(other, rng) + data[at + rng.choice([0, 0, 4096]):]


def r_splice_mpeg_ps(data, rng, other):  # an MPEG-PS chunk in the middle of this file (the FLV case)
    mpg = (MEDIA / "grid_s1_bbaf2n.mpg").read_bytes()
    at = _cut(data, rng)
    return data[:at] + _chunk(mpg, rng, 131072) + data[at:]


def r_garbage_tail(data, rng, other):
    head = data[:_cut(data, rng)]
    return head + rng.randbytes(len(data) - len(head))


def crash_file(out: Path) -> Path:
    """bbb_h264_aac51.mp4 with 256 bytes flipped by random.Random(5): FFmpeg 8.1.2 (PyAV 18.1 wheels)
    segfaults decoding its first 2 s (found by searching seeds 0-20 of this recipe: 5, 18 and 19 crash)."""
    out.write_bytes(bytes(flip(bytearray((MEDIA / "bbb_h264_aac51.mp4").read_bytes()), 256, random.Random(5))))
    return out


RECIPES = [r_flip, r_flip256, r_flip_head, r_truncate, r_truncate_flip, r_zero_head, r_duplicate, r_splice,
           r_splice_mpeg_ps, r_garbage_tail]


def mutate(i: int, seed: int = 0) -> tuple[str, bytes]:
    """File i of the corpus -> (file name, bytes)."""
    recipe = RECIPES[i % len(RECIPES)]
    name = SEEDS[(i // len(RECIPES)) % len(SEEDS)]
    rng = random.Random(f"{seed}:{i}")
    data = (MEDIA / name).read_bytes()
    other = (MEDIA / SEEDS[rng.randrange(len(SEEDS))]).read_bytes()
    stem, ext = name.rsplit(".", 1)
    return f"{i:04d}_{recipe.__name__[2:]}_{stem}.{ext}", bytes(recipe(data, rng, other))


# ---- streams that appear after the header (FLV: the demuxer adds a stream when its first packet comes) --------
FLV_SEED = "cremad_1001_DFA_ANG_XX.flv"
AUDIO_TAG, VIDEO_TAG, SCRIPT_TAG = 8, 9, 18


def flv_tags(data: bytes) -> list[tuple[int, int, bytes]]:
    """An FLV file's tags after its 13-byte head: (type, timestamp ms, the tag's bytes with its trailing size)."""
    out, at = [], 13
    while at + 11 <= len(data):
        size = int.from_bytes(data[at + 1:at + 4], "big")
        out.append((data[at], int.from_bytes(data[at + 4:at + 7], "big") | data[at + 7] << 24,
                    data[at:at + 15 + size]))
        at += 15 + size
    return out


def flv_tag(kind: int, ms: int, body: bytes) -> bytes:
    head = bytes([kind]) + len(body).to_bytes(3, "big") + (ms & 0xFFFFFF).to_bytes(3, "big") + bytes([ms >> 24 & 0xFF])
    return head + b"\0\0\0" + body + (11 + len(body)).to_bytes(4, "big")


def flv_retimed(tag: bytes, ms: int) -> bytes:
    return tag[:4] + (ms & 0xFFFFFF).to_bytes(3, "big") + bytes([ms >> 24 & 0xFF]) + tag[8:]


def text_data(text: str) -> bytes:
    """An AMF0 onTextData script body: FFmpeg's FLV demuxer opens a subtitle stream for the first one."""
    def amf(s: str) -> bytes:
        b = s.encode()
        return len(b).to_bytes(2, "big") + b
    return b"\x02" + amf("onTextData") + b"\x03" + amf("text") + b"\x02" + amf(text) + b"\0\0\x09"


def late_streams(loops: int, text_ms: int | None, audio_from_ms: int = 0) -> bytes:
    """The FLV seed played `loops` times in a row (timestamps continued), its audio tags dropped before
    `audio_from_ms` (the audio stream then starts there, its AAC header first), and an onTextData tag at
    `text_ms` (a subtitle stream appears there)."""
    data = (MEDIA / FLV_SEED).read_bytes()
    tags = flv_tags(data)
    span = max(ms for _, ms, _ in tags) + 40
    out, header_sent = [data[:13]], False
    body = [(kind, ms + k * span, tag) for k in range(loops) for kind, ms, tag in tags
            if k == 0 or kind != SCRIPT_TAG]
    aac_header = next(tag for kind, _, tag in tags if kind == AUDIO_TAG)
    for kind, ms, tag in body:
        if text_ms is not None and ms >= text_ms:
            out.append(flv_tag(SCRIPT_TAG, ms, text_data("a stream that appears mid-file")))
            text_ms = None
        if kind == AUDIO_TAG and ms < audio_from_ms:
            continue
        if kind == AUDIO_TAG and not header_sent and audio_from_ms:
            out.append(flv_retimed(aac_header, ms))
            header_sent = True
        out.append(flv_retimed(tag, ms))
    return b"".join(out)


# (name, loops, text at ms, audio from ms): a subtitle stream that appears after FFmpeg's probe of the stream list
# (1.5 s into the 2.2-s seed; 6 s into the seed played 4 times), audio that starts late, both
LATE = [("text_at_1500", 1, 1500, 0), ("text_at_1900", 1, 1900, 0), ("text_at_6000", 4, 6000, 0),
        ("audio_from_1500", 1, None, 1500), ("text_and_audio_late", 1, 1700, 1200)]


def late_stream(j: int) -> tuple[str, bytes]:
    """Late-stream file j (see LATE) -> (file name, bytes); written by `make` into out/late_streams/."""
    name, loops, text_ms, audio_ms = LATE[j]
    return f"late_{j}_{name}.flv", late_streams(loops, text_ms, audio_ms)


def make(out: Path, count: int, seed: int = 0, indices: list[int] | None = None, batch: int = BATCH) -> list[Path]:
    """Write the corpus (or the files `indices`) under out/batch_NN/, and the LATE files under
    out/late_streams/ when the whole corpus is made; returns their paths."""
    paths = []
    for i in indices if indices is not None else range(count):
        name, data = mutate(i, seed)
        path = out / f"batch_{i // batch:02d}" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    for j in range(len(LATE)) if indices is None else []:
        name, data = late_stream(j)
        path = out / "late_streams" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        paths.append(path)
    return paths


# ---- running the CLI ----------------------------------------------------------------------------------
def classify(args: list[str], model: Path, timeout: float) -> dict:
    """One `mmdeploy classify ARGS --json` call -> {code, signal, hang, traceback, lines, stderr, seconds}."""
    cmd = [sys.executable, "-m", "mmdeploy", "classify", *args, "--json", "--model", str(model)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        return {"code": None, "signal": False, "hang": True, "traceback": False, "lines": [],
                "stderr": (exc.stderr or b"")[-2000:] if isinstance(exc.stderr, str) else "", "seconds": timeout}
    lines = []
    for line in done.stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            lines.append({"unparsed": line})
    return {"code": done.returncode, "signal": done.returncode < 0, "hang": False,
            "traceback": "Traceback (most recent call last)" in done.stderr, "lines": lines,
            "stderr": done.stderr, "seconds": time.perf_counter() - t0}


def check(call: dict, inputs: list[Path]) -> list[str]:
    """The rules one call broke (empty: none)."""
    broken = []
    if call["hang"]:
        broken.append("hang")
    if call["signal"]:
        broken.append(f"signal {-call['code']}")
    if call["traceback"]:
        broken.append("traceback")
    if call["code"] not in (0, 2, None):
        broken.append(f"exit {call['code']}")
    if not call["hang"]:
        seen = collections.Counter(x.get("file") for x in call["lines"] if "error" in x or "top_k" in x)
        if seen != collections.Counter(map(str, inputs)):
            broken.append(f"inputs reported {sum(seen.values())}/{len(inputs)} (once each expected)")
    return broken


def run(corpus: Path, model: Path, single: int, timeline: int, timeout: float, folders: int | None = None,
        seed: int = 0) -> int:
    batches = sorted(p for p in corpus.iterdir() if p.is_dir())
    files = sorted(f for b in batches for f in b.iterdir())
    rows, bad, errors = [], [], collections.Counter()
    for folder in batches[:folders]:
        inputs = sorted(folder.iterdir())
        call = classify([str(folder)], model, timeout * len(inputs) / 10)
        rows.append(("folder", folder.name, len(inputs), call))
        for x in call["lines"]:
            if "error" in x:
                errors[x["error"].split(" (")[0][:60]] += 1
        broken = check(call, inputs)
        if broken:
            bad.append((folder, broken, call["stderr"][-1500:]))
        print(f"{folder.name}: exit {call['code']}, {call['seconds']:.0f} s, {broken or 'ok'}", flush=True)
    sample = random.Random(seed).sample(files, min(single, len(files)))
    for path in sample:
        call = classify([str(path)], model, timeout)
        rows.append(("single", path.name, 1, call))
        broken = check(call, [path])
        if broken:
            bad.append((path, broken, call["stderr"][-1500:]))
    if timeline:
        picked = sorted(random.Random(seed + 1).sample(files, min(timeline, len(files))))
        call = classify([*map(str, picked), "--window", "2", "--hop", "1"], model, timeout * len(picked) / 10)
        call["inputs"] = list(map(str, picked))
        rows.append(("timeline", "timeline", len(picked), call))
        broken = check(call, picked)
        if broken:
            bad.append(("timeline run", broken, call["stderr"][-1500:]))
    seeds = {s for f in files for s in SEEDS if f.name.endswith(s)}
    print(f"\ncorpus {corpus}: {len(files)} files from {len(seeds)} seed clips")
    print("| run | calls | files | exit 0 | exit 2 | other exit | signals | hangs | tracebacks | inputs != once | s/call |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for kind in ("folder", "single", "timeline"):
        calls = [r for r in rows if r[0] == kind]
        if not calls:
            continue
        c = [r[3] for r in calls]
        once = sum(1 for r in calls if any("inputs" in b for b in check(r[3], _inputs(r, corpus))))
        print(f"| {kind} | {len(c)} | {sum(r[2] for r in calls)} | {sum(x['code'] == 0 for x in c)} | "
              f"{sum(x['code'] == 2 for x in c)} | {sum(x['code'] not in (0, 2, None) and not x['signal'] for x in c)} | "
              f"{sum(x['signal'] for x in c)} | {sum(x['hang'] for x in c)} | {sum(x['traceback'] for x in c)} | "
              f"{once} | {sum(x['seconds'] for x in c) / len(c):.1f} |")
    print("\nerror reasons in the folder runs (first words):")
    for reason, n in errors.most_common():
        print(f"  {n:4d}  {reason}")
    for what, broken, stderr in bad:
        print(f"\nBROKEN {what}: {broken}\n{stderr}")
    return 1 if bad else 0


def _inputs(row, corpus: Path) -> list[Path]:
    kind, name = row[0], row[1]
    if kind == "folder":
        return sorted((corpus / name).iterdir())
    if kind == "timeline":
        return [Path(x) for x in row[3]["inputs"]]
    return [next(corpus.glob(f"batch_*/{name}"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    mk = sub.add_parser("make", help="write the corpus")
    mk.add_argument("--out", type=Path, required=True)
    mk.add_argument("--count", type=int, default=1000)
    mk.add_argument("--seed", type=int, default=0)
    rn = sub.add_parser("run", help="classify the corpus with the CLI and count broken rules")
    rn.add_argument("--corpus", type=Path, required=True)
    rn.add_argument("--model", type=Path, required=True)
    rn.add_argument("--single", type=int, default=50, help="files also classified one CLI call each")
    rn.add_argument("--folders", type=int, default=None, help="batch folders to run (default: all)")
    rn.add_argument("--timeline", type=int, default=100, help="files also classified as timelines (one call)")
    rn.add_argument("--timeout", type=float, default=300.0, help="s per single-file call (folders: per 10 files)")
    args = parser.parse_args()
    if args.command == "make":
        paths = make(args.out, args.count, args.seed)
        print(f"{len(paths)} files from {min(len(SEEDS), -(-args.count // len(RECIPES)))} seed clips in {args.out}")
    else:
        sys.exit(run(args.corpus, args.model, args.single, args.timeline, args.timeout, args.folders))


if __name__ == "__main__":
    main()
