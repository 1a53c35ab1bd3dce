"""Feature cache: decode + features once per (file, window, spec), so training epochs never re-decode.

Layout: ROOT/<spec digest>/<key[:2]>/<key>/{meta.json, audio.npy, video.npy}. The key hashes the
file's identity (resolved path, size, mtime_ns; the same for `audio_path`) and the window (start,
end), so a changed file or a changed spec lands on a new entry; stale entries are never read.
An entry is written into a temporary folder and renamed into place, so a reader sees a whole entry
or none, whatever concurrent workers or a killed run did. meta.json records which modalities the
file has; an absent modality has no .npy. Arrays are plain .npy (no pickle), read memory-mapped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from mmdeploy.data.manifest import Item
from mmdeploy.errors import MediaError, MmdeployError
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.settings import cpu_count
from mmdeploy.spec import ClipSpec

MODALITIES = ("audio", "video")


def _identity(path: str) -> dict[str, object]:
    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise MediaError(path, "file not found; re-index the dataset or fix the manifest path") from None
    return {"path": str(p), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def item_key(item: Item) -> str:
    """Hex digest of the file identity (+ audio file identity) and the window; spec digest goes in the folder."""
    ident = {"file": _identity(item.path), "start": item.start, "end": item.end,
             "audio": _identity(item.audio_path) if item.audio_path else None}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:32]


class FeatureCache:
    """`get(item) -> (audio [1,F,T] | None, video [3,N,H,W] | None)` float32 tensors, computed on a miss."""

    def __init__(self, root: str | Path, spec: ClipSpec, options: DecodeOptions = DecodeOptions()):
        self.root = Path(root)
        self.spec, self.options = spec, options
        self.dir = self.root / spec.digest()

    def entry(self, item: Item) -> Path:
        key = item_key(item)
        return self.dir / key[:2] / key

    def has(self, item: Item) -> bool:
        return (self.entry(item) / "meta.json").is_file()

    def get(self, item: Item) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        entry = self.entry(item)
        if (entry / "meta.json").is_file():
            try:
                return self._load(entry)
            except (OSError, ValueError, KeyError):  # damaged on disk: drop it and recompute
                pass
        shutil.rmtree(entry, ignore_errors=True)
        tensors = self._compute(item)
        self._store(entry, tensors)
        return tensors

    def _compute(self, item: Item) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        from mmdeploy import features

        return features.file_features(item.path, self.spec, start=item.start, end=item.end,
                                      audio_path=item.audio_path, options=self.options)

    def _load(self, entry: Path) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        meta = json.loads((entry / "meta.json").read_text())
        out = []
        for m in MODALITIES:
            if meta[m]:
                arr = np.load(entry / f"{m}.npy", mmap_mode="r", allow_pickle=False)
                out.append(torch.from_numpy(np.array(arr, dtype=np.float32)))
            else:
                out.append(None)
        return out[0], out[1]

    def _store(self, entry: Path, tensors: tuple[torch.Tensor | None, torch.Tensor | None]) -> None:
        if not (self.dir / "spec.json").is_file():
            _write_atomic(self.dir / "spec.json", self.spec.to_json().encode())
        tmp = entry.parent / f".tmp-{entry.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        meta = {}
        for m, t in zip(MODALITIES, tensors):
            meta[m] = t is not None
            if t is not None:
                np.save(tmp / f"{m}.npy", t.detach().to(torch.float32).contiguous().numpy(), allow_pickle=False)
        (tmp / "meta.json").write_text(json.dumps(meta))
        try:
            os.rename(tmp, entry)
        except OSError:  # another worker finished the same entry first; theirs is identical
            shutil.rmtree(tmp, ignore_errors=True)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _warm_one(root: Path, spec: ClipSpec, item: Item, options: DecodeOptions = DecodeOptions()) -> str | None:
    """Fill one entry; a user-fixable error (bad file) comes back as its message."""
    try:
        FeatureCache(root, spec, options).get(item)
    except MmdeployError as exc:
        return str(exc)
    return None


def _init_worker() -> None:
    torch.set_num_threads(1)


def warm_cache(items: list[Item], spec: ClipSpec, root: str | Path, workers: int | None = None,
               engine: str = "local", address: str | None = None,
               options: DecodeOptions = DecodeOptions()) -> list[tuple[Item, str]]:
    """Compute every missing entry, in `workers` spawned processes (1 = in this process), or with
    engine="ray" in Ray tasks across a cluster (`address`; none = a local Ray instance), `workers` at once
    (default: every CPU). With Ray, `root` must be a folder every node sees at the same path.

    `options` (media.DecodeOptions) is how the decoders decode. Returns the items that could not be decoded,
    with the reason; the rest are cached."""
    cache = FeatureCache(root, spec)
    failures: list[tuple[Item, str]] = []
    todo = []
    for item in items:
        try:
            if not cache.has(item):
                todo.append(item)
        except MediaError as exc:
            failures.append((item, str(exc)))
    if engine == "ray":
        results = _warm_ray(todo, spec, cache.root, workers, address, options) if todo else []
        failures += [(it, err) for it, err in zip(todo, results) if err is not None]
        return failures
    workers = max(1, min(workers or cpu_count(), len(todo)))
    if workers == 1:
        results = [_warm_one(cache.root, spec, it, options) for it in todo]
    else:
        n = len(todo)
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker) as pool:
            results = list(pool.map(_warm_one, [cache.root] * n, [spec] * n, todo, [options] * n,
                                    chunksize=max(1, n // (workers * 8))))
    failures += [(it, err) for it, err in zip(todo, results) if err is not None]
    return failures


# ---- on Ray ------------------------------------------------------------------------------------------
RAY_BATCH = 16  # items per Ray task: what a dying worker costs (the task is retried once)


def _warm_batch(batch: dict[str, np.ndarray], root: str, spec_json: str,
                options: DecodeOptions = DecodeOptions()) -> dict[str, np.ndarray]:
    """Ray task: a batch of items (JSON) -> their error messages ("" = cached)."""
    torch.set_num_threads(1)
    spec = ClipSpec.from_json(spec_json)
    errors = [_warm_one(Path(root), spec, Item(**json.loads(str(t))), options) or "" for t in batch["item"]]
    return {"index": batch["index"], "error": np.array(errors, dtype=object)}


def _warm_ray(todo: list[Item], spec: ClipSpec, root: Path, workers: int | None,
              address: str | None, options: DecodeOptions = DecodeOptions()) -> list[str | None]:
    """The `warm_cache` loop on Ray Data: one task per RAY_BATCH items, at most `workers` at once."""
    import dataclasses
    import warnings

    import pyarrow as pa
    import ray
    import ray.data

    from mmdeploy.raycluster import configure_data, connect

    connect(address, cpus=None if address else cpu_count())
    configure_data()
    workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    texts = [json.dumps(dataclasses.asdict(it)) for it in todo]
    blocks = [pa.table({"index": list(range(i, min(i + RAY_BATCH, len(texts)))), "item": texts[i:i + RAY_BATCH]})
              for i in range(0, len(texts), RAY_BATCH)]
    with warnings.catch_warnings():  # max_retries is a plain Ray remote arg (deprecated spelling)
        warnings.simplefilter("ignore")
        ds = ray.data.from_arrow(blocks).map_batches(
            _warm_batch, batch_size=RAY_BATCH, batch_format="numpy",
            fn_kwargs={"root": str(Path(root).resolve()), "spec_json": spec.to_json(), "options": options},
            compute=ray.data.TaskPoolStrategy(size=workers), num_cpus=1, max_retries=1)
    results: list[str | None] = ["its Ray worker died twice while decoding it (a decoder crash, or out of "
                                 "memory); the file is damaged or hostile"] * len(todo)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for i, err in zip(batch["index"], batch["error"]):
            results[int(i)] = str(err) or None
    return results
