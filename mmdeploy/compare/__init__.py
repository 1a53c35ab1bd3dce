"""`mmdeploy compare`: every method x seed on one recipe, then tables, paired tests and a plot.

    OUT/runs/METHOD-seedS/   a normal bundle per run (train, eval, export and classify it like any other)
    OUT/compare.json         command, date, machine, recipe, per-run metrics and the summary
    OUT/compare.csv          one row per method x metric: mean, std, 95 % CI, paired tests vs the first method
    OUT/compare.md           the Markdown table (fused / audio head / video head accuracy, macro-F1, ECE)
    OUT/compare.png          bars with 95 % intervals, per-modality accuracy

Every method sees the same manifest (so the same splits) and the same seeds 0..N-1; only the method
changes. A run that finished is skipped, a run with a checkpoint is resumed, so a killed compare picks up
where it stopped without retraining finished runs (runs are keyed by method and seed only: after changing
the recipe or the overrides, use a new `out`). `jobs` > 1 trains that many runs at once in separate
processes (torch threads split between them).
"""
from __future__ import annotations

import datetime as _dt
import platform
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from mmdeploy.compare.runs import finished, run_dir
from mmdeploy.errors import ConfigError
from mmdeploy.settings import cpu_count

DEFAULT_METHODS = ("joint", "multiloss", "mlb", "mcr", "ensemble", "pretrain-finetune")


def _train_one(job: dict[str, Any]) -> str:
    """One method x seed (in a worker process when jobs > 1): train, or resume, or nothing if finished."""
    import torch

    from mmdeploy.train import CHECKPOINT, train

    if job["threads"]:
        torch.set_num_threads(job["threads"])
    run = Path(job["run"])
    if finished(run):
        return "skipped"
    resume = (run / CHECKPOINT / "state.json").is_file() or (run / (CHECKPOINT + ".old") / "state.json").is_file()
    train(job["recipe"], run, overrides=job["sets"], method=job["method"], seed=job["seed"], resume=resume,
          quiet=True)
    return "resumed" if resume else "trained"


def parse_methods(text: str | list[str]) -> list[str]:
    from mmdeploy.balance import METHODS

    names = [m.strip() for m in (text.split(",") if isinstance(text, str) else text) if m.strip()]
    unknown = [m for m in names if m not in METHODS]
    if unknown:
        raise ConfigError(f"--methods: {', '.join(unknown)} unknown; choose from {', '.join(METHODS)}")
    if len(names) < 2 or len(set(names)) != len(names):
        raise ConfigError(f"--methods: need at least two distinct methods (the first is the reference), got {names}")
    return names


def method_sets(items: list[str], methods: list[str]) -> dict[str, list[str]]:
    """`--method-set mcr.permutations=8` -> {"mcr": ["method.permutations=8"]}."""
    out: dict[str, list[str]] = {m: [] for m in methods}
    for item in items:
        name, dot, rest = item.partition(".")
        if not dot or name not in out or "=" not in rest:
            raise ConfigError(f"--method-set {item!r}: expected METHOD.key=value with METHOD one of "
                              f"{', '.join(methods)}")
        out[name].append(f"method.{rest}")
    return out


def machine() -> str:
    """CPU model, cores, OS and torch version: the README's 'machine' line."""
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {cores} cores, {gpu}, {platform.system()} {platform.release()}, torch {torch.__version__}"


def compare(recipe: str | Path, methods: list[str] | str = DEFAULT_METHODS, seeds: int = 5,
            out: str | Path = "runs/compare", jobs: int = 1, overrides: list[str] | tuple[str, ...] = (), per_method: list[str] | tuple[str, ...] = (),
            say: Callable[[str], None] = print, command: str | None = None) -> dict[str, Any]:
    """Train (or reuse) every method x seed, then write compare.{json,csv,md,png} under `out`; returns the
    summary dict that compare.json holds."""
    from mmdeploy.compare.report import collect, summarize_runs, write_reports
    from mmdeploy.recipe import load_recipe
    from mmdeploy.train import Dist, prepare_data

    names = parse_methods(methods)
    if not isinstance(seeds, int) or seeds < 2:
        raise ConfigError(f"--seeds: need at least 2 seeds for intervals and paired tests, got {seeds!r}")
    if not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"--jobs: need a positive integer, got {jobs!r}")
    extra = method_sets(list(per_method), names)
    out = Path(out)
    rec = load_recipe(recipe, list(overrides))
    source = str(Path(recipe).resolve()) if isinstance(recipe, (str, Path)) and Path(recipe).is_file() else recipe
    cores = cpu_count()
    prepare_data(rec, rec.data.clip_spec(), Dist(), cores, say)  # generate / cache once, before any worker
    out.mkdir(parents=True, exist_ok=True)
    jobs_list = [{"recipe": source, "run": str(run_dir(out, m, s)), "method": m, "seed": s,
                  "sets": [*overrides, *extra[m]], "threads": max(1, cores // jobs) if jobs > 1 else None}
                 for s in range(seeds) for m in names]
    todo = [j for j in jobs_list if not finished(Path(j["run"]))]
    say(f"compare: {len(names)} methods x {seeds} seeds = {len(jobs_list)} runs, {len(jobs_list) - len(todo)} "
        f"finished already, {len(todo)} to train ({jobs} at a time) -> {out}")
    if jobs == 1:
        for i, job in enumerate(todo, 1):
            say(f"[{i}/{len(todo)}] {job['method']} seed {job['seed']}: {_train_one(job)}")
    elif todo:
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            for i, (job, status) in enumerate(zip(todo, pool.map(_train_one, todo)), 1):
                say(f"[{i}/{len(todo)}] {job['method']} seed {job['seed']}: {status}")
    runs = collect(out, names, seeds)
    summary = summarize_runs(runs, names)
    meta = {"command": command or " ".join(["mmdeploy", *sys.argv[1:]]),
            "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"), "machine": machine(),
            "recipe": str(recipe), "overrides": list(overrides), "method_sets": extra, "seeds": list(range(seeds)),
            "methods": names, "reference": names[0]}
    result = {**meta, "runs": runs, "summary": summary}
    write_reports(result, out)
    say(f"wrote {out / 'compare.md'}, compare.csv, compare.json, compare.png")
    return result
