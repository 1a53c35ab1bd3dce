"""The CLI on byte-mutated real clips (a seeded subset of benchmarks/fuzz_corpus.py's corpus), as a user runs
it (a separate process): no traceback, no signal, no hang, exit code 0 or 2, every input exactly once in
the --json lines, and each failed file one `error: FILE: reason` line on stderr."""
from __future__ import annotations

import collections
import json
import random
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FUZZ = runpy.run_path(str(REPO / "benchmarks" / "fuzz_corpus.py"))
# the two escaping-exception cases: FLV truncated then flipped, MPEG-PS spliced into FLV
FLV_CASES = [4, 8, 124, 128]

pytestmark = pytest.mark.slow


def classify(*args: str, model: Path, timeout: float = 600) -> tuple[int, list[dict], str]:
    done = subprocess.run([sys.executable, "-m", "mmdeploy", "classify", *args, "--json", "--model", str(model)],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
    return done.returncode, [json.loads(line) for line in done.stdout.splitlines()], done.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, media_dir) -> list[Path]:
    """48 files of the 1,000-file corpus (seeded sample over all recipes and seed clips) + the FLV cases, and the
    late-stream FLVs (fuzz_corpus.LATE) in a folder of their own."""
    indices = sorted(set(random.Random(11).sample(range(1000), 44)) | set(FLV_CASES))
    root = tmp_path_factory.mktemp("fuzz")
    paths = FUZZ["make"](root, 1000, 0, indices)
    for j in range(len(FUZZ["LATE"])):
        name, data = FUZZ["late_stream"](j)
        (root / "late_streams").mkdir(exist_ok=True)
        (root / "late_streams" / name).write_bytes(data)
        paths.append(root / "late_streams" / name)
    return paths


def test_corpus_is_deterministic_and_covers_the_seeds(corpus):
    names, data = FUZZ["mutate"](FLV_CASES[1])
    assert names == "0008_splice_mpeg_ps_cremad_1001_DFA_ANG_XX.flv" and data == FUZZ["mutate"](8)[1]
    assert len({FUZZ["mutate"](i)[0].split("_", 2)[2] for i in range(1000)}) >= 8
    assert len({p.name.split("_")[1] for p in corpus}) >= 6  # recipes in the sample


def test_cli_folder_run_survives_the_fuzz_subset(corpus, tmp_path_factory, tiny_bundle):
    root = corpus[0].parents[1]
    crash = FUZZ["crash_file"](root / "crash_bbb_h264_aac51.mp4")  # a real decoder segfault
    code, rows, err = classify(str(root), "--workers", "2", model=tiny_bundle)
    assert code in (0, 2) and "Traceback" not in err, err[-3000:]
    inputs = [*map(str, corpus), str(crash)]
    reported = collections.Counter(r["file"] for r in rows if "error" in r or "top_k" in r)
    assert reported == collections.Counter(inputs)
    failed = {r["file"]: r["error"] for r in rows if "error" in r}
    assert failed[str(crash)].startswith("the decoder crashed (signal 11, SIGSEGV)")
    assert not [f for f in failed if "/late_streams/" in f], failed  # a stream that appears mid-file is no error
    assert sorted(err.splitlines()) == sorted(f"error: {f}: {e}" for f, e in failed.items())
    assert code == 2


def test_cli_single_file_decoder_crash_is_one_line(tmp_path, tiny_bundle):
    crash = FUZZ["crash_file"](tmp_path / "crash.mp4")
    code, rows, err = classify(str(crash), model=tiny_bundle)
    assert code == 2 and err.startswith(f"error: {crash}: the decoder crashed (signal 11") and err.count("\n") == 1
    assert rows == [{"file": str(crash), "error": err.split(": ", 2)[2].strip()}]
