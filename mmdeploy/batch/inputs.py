"""What a run is asked: INPUT arguments (folders, globs, files, manifests) -> sources with their resume key,
the model's id, and the Job every engine runs."""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mmdeploy.batch.parquet import RESULT_FIELDS
from mmdeploy.errors import ConfigError
from mmdeploy.media.clip import DecodeOptions
from mmdeploy.settings import DECODE_TIMEOUT_S

MANIFEST_SUFFIXES = (".csv", ".parquet")


@dataclass
class Source:
    """One input file: its identity (the resume key without the model) and the manifest columns it carries."""
    path: str
    file_id: str
    size: int
    mtime_ns: int
    carry: dict[str, Any] = field(default_factory=dict)
    missing: str | None = None  # why it cannot be read at all (then no decode is tried)


def identify(path: str, carry: dict[str, Any] | None = None) -> Source:
    """stat the file -> Source; file_id = blake2b(path, size, mtime_ns), 8 bytes as hex."""
    path = os.path.abspath(path)
    try:
        st = os.stat(path)
        size, mtime, missing = st.st_size, st.st_mtime_ns, None
    except OSError:
        size, mtime, missing = -1, -1, "no such file"
    key = hashlib.blake2b(f"{path}\0{size}\0{mtime}".encode(), digest_size=8).hexdigest()
    return Source(path, key, size, mtime, carry or {}, missing)


def read_inputs(inputs: Iterable[str], limit: int | None = None) -> tuple[list[tuple[str, dict]], list, list[str]]:
    """INPUT arguments -> ([(path, carried columns)], carried pyarrow fields, errors as 'PATH: reason').
    Manifests give their rows; folders, globs and files go through pipeline.expand_paths. Paths are
    deduplicated (first wins), at most `limit`."""
    from mmdeploy.pipeline import expand_paths

    rows: list[tuple[str, dict]] = []
    carried: dict[str, Any] = {}
    errors: list[str] = []
    plain: list[str] = []

    def flush_plain() -> None:
        files, errs = expand_paths(plain)
        rows.extend((str(p), {}) for p in files)
        errors.extend(str(e) for e in errs)
        plain.clear()

    for arg in inputs:
        path = Path(arg)
        if path.suffix.lower() in MANIFEST_SUFFIXES and path.is_file():
            flush_plain()
            table = read_manifest_table(path)
            for f in table.schema:
                if f.name != "path":
                    name = f"input_{f.name}" if f.name in RESULT_FIELDS else f.name
                    carried.setdefault(name, f.with_name(name))
            root = path.parent
            names = [n for n in table.column_names if n != "path"]
            for rec in table.to_pylist():
                p = rec["path"]
                if not p:
                    errors.append(f"{path}: a row has an empty path")
                    continue
                full = p if os.path.isabs(p) else str(root / p)
                rows.append((full, {(f"input_{n}" if n in RESULT_FIELDS else n): rec[n] for n in names}))
        else:
            plain.append(arg)
    flush_plain()
    seen: set[str] = set()
    unique = []
    for p, carry in rows:
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            unique.append((p, carry))
    return (unique[:limit] if limit is not None else unique), list(carried.values()), errors


def read_manifest_table(path: Path):
    """A CSV or Parquet manifest -> pyarrow Table with a string `path` column."""
    import pyarrow as pa

    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"path": pa.string()}))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise ConfigError(f"{path}: cannot read the manifest ({str(exc).splitlines()[0]})") from None
    if "path" not in table.column_names:
        raise ConfigError(f"{path}: manifest has no `path` column (columns: {', '.join(table.column_names)}); "
                          "add one with the media file paths")
    if not pa.types.is_string(table.schema.field("path").type):
        table = table.set_column(table.column_names.index("path"), "path", table["path"].cast(pa.string()))
    return table


def model_id(run: str | Path) -> str:
    """The bundle's weights digest as recorded in model.json (else hashed from the file), 16 hex."""
    from mmdeploy.bundle import read_meta

    meta = read_meta(run)
    digest = (meta.get("weights") or {}).get("sha256") if isinstance(meta.get("weights"), dict) else None
    if not digest:
        h = hashlib.sha256()
        with open(Path(run) / "model.safetensors", "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        digest = h.hexdigest()
    return digest[:16]


@dataclass
class Job:
    """What every engine needs to run one batch."""
    model: Path
    backend: str = "auto"
    top_k: int = 5
    window: float | None = None
    hop: float | None = None
    timeout: float | None = DECODE_TIMEOUT_S
    workers: int | None = None  # local: decode processes; ray: decode tasks at once
    options: DecodeOptions = DecodeOptions()  # how the decoders decode (pipeline.decode_options(settings))

    @property
    def timeline(self) -> bool:
        return self.window is not None or self.hop is not None
