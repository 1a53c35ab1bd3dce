"""The training loop: one recipe, no framework.

    recipe -> data (generate synthetic clips on first use, warm the feature cache) -> model + method
    -> for each epoch: steps (forward, loss, backward, balance grads, optimizer step, lr for next step)
       -> validation (fused / per-head accuracy, macro-F1, ECE) -> best-by-val bundle -> checkpoint

Files in RUN: model.safetensors + model.json (the best epoch's bundle), metrics.jsonl (one line per
epoch), steps.jsonl (loss, lr and balancing coefficients per step), plots/*.png (at the end),
checkpoint/ (last epoch: weights and optimizer tensors in safetensors, counters in JSON; no pickle).

Determinism (for one seed and one torch thread count): every epoch reseeds torch/numpy/random and the
shuffle generator from (seed, epoch), so a run resumed from the checkpoint of epoch e continues exactly
as the uninterrupted run. Under torchrun
(WORLD_SIZE > 1) the model is wrapped in DDP, the method's scores are all-reduced so every rank applies
the same coefficients, and only rank 0 writes files.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from mmdeploy.errors import ConfigError
from mmdeploy.progress import Progress
from mmdeploy.settings import cpu_count
from mmdeploy.evaluate import predict, summarize
from mmdeploy.recipe import Recipe, load_recipe

CHECKPOINT = "checkpoint"


# ---- process and device ----------------------------------------------------------------------
@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    """One process (default), or a torchrun worker: gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda requested but no CUDA GPU is visible; use auto or cpu")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """The method's `reduce` hook under DDP: scores averaged over ranks, so k is identical everywhere."""
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / dist.get_world_size()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch + 1


# ---- optimizer and learning-rate schedule -----------------------------------------------------
def make_optimizer(params, cfg) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def learning_rate(step: int, base: float, cfg, total_steps: int) -> float:
    """lr for global step `step` (0-based).

    constant: base (linear warm-up over warmup_steps if set). cosine: linear warm-up, then half a cosine
    to 0 at the last step. constant_cosine_restarts (the paper, §4): base for warmup_steps steps, then
    CosineAnnealingWarmRestarts(T_0=t0, T_mult=t_mult, eta_min=0) indexed by the global step itself,
    so cycles restart at steps t0 * (t_mult^n - 1) / (t_mult - 1).
    """
    if cfg.name == "constant_cosine_restarts":
        if step < cfg.warmup_steps:
            return base
        t0, mult = cfg.t0, cfg.t_mult
        if mult == 1:
            t_cur, t_i = step % t0, t0
        else:
            n = int(np.log(step / t0 * (mult - 1) + 1) / np.log(mult)) if step >= t0 else 0
            t_cur, t_i = step - t0 * (mult ** n - 1) // (mult - 1), t0 * mult ** n
            if t_cur >= t_i:  # guard against float rounding of the log at a restart
                t_cur, t_i = t_cur - t_i, t_i * mult
        return base * (1 + np.cos(np.pi * t_cur / t_i)) / 2
    if step < cfg.warmup_steps:
        return base * (step + 1) / cfg.warmup_steps
    if cfg.name == "cosine":
        span = max(1, total_steps - cfg.warmup_steps)
        return base * (1 + np.cos(np.pi * min(step - cfg.warmup_steps, span) / span)) / 2
    return base


# ---- one step ---------------------------------------------------------------------------------
def train_step(net, model, method, optimizer, audio, video, labels, epoch: int) -> tuple[dict, float, dict]:
    """forward -> loss -> backward -> method scales grads -> optimizer step.
    `net` runs the forward (the DDP wrapper when distributed); `model` is the AVClassifier whose
    param_groups the method scales."""
    optimizer.zero_grad(set_to_none=True)
    outputs = method.forward(net, audio, video)
    loss = method.loss(outputs, labels)
    loss.backward()
    logs = method.after_backward(model, outputs, labels, epoch) or {}
    optimizer.step()
    return outputs, loss.item(), {k: float(v) for k, v in logs.items()}


# ---- data -------------------------------------------------------------------------------------
def prepare_data(recipe: Recipe, spec, ctx: Dist, workers: int, say) -> tuple[Any, list]:
    """Rank 0 generates the synthetic set if asked and missing, then warms the feature cache.
    Returns the manifest and the items that could not be decoded (skipped, with a warning)."""
    from mmdeploy.data.cache import warm_cache
    from mmdeploy.data.manifest import read_manifest

    path, synth = recipe.data.manifest_path, recipe.data.synth
    if ctx.main and not path.is_file():
        from mmdeploy.data.synth import generate

        say(f"generating {synth.clips} synthetic clips into {path.parent}")
        generate(path.parent, clips=synth.clips, seed=synth.seed, classes=synth.classes, workers=workers)
    if ctx.world > 1:
        dist.barrier()
    manifest = read_manifest(path)
    if ctx.main:  # a process pool only pays off beyond a few dozen clips
        pool = min(workers, max(1, len(manifest.items) // 64))
        failures = warm_cache(manifest.items, spec, recipe.data.cache_path, workers=pool)
    if ctx.world > 1:  # the others find everything cached and learn the same failures
        dist.barrier()
        failures = warm_cache(manifest.items, spec, recipe.data.cache_path, workers=1)
    for item, reason in failures[:5]:
        say(f"skipping {item.path}: {reason}")
    if len(failures) > 5:
        say(f"... and {len(failures) - 5} more undecodable items")
    return manifest, [item for item, _ in failures]


def make_loaders(recipe: Recipe, manifest, spec, ctx: Dist, skip: list):
    from torch.utils.data import DataLoader, DistributedSampler

    from mmdeploy.data.dataset import AVDataset

    cfg, cache = recipe.train, recipe.data.cache_path
    train_set = AVDataset(manifest, "train", spec, cache, augment=cfg.augment, seed=cfg.seed, skip=skip)
    sampler = DistributedSampler(train_set, ctx.world, ctx.rank, shuffle=True, seed=cfg.seed) \
        if ctx.world > 1 else None
    gen = torch.Generator()
    train = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=sampler is None, sampler=sampler,
                       generator=gen, num_workers=cfg.num_workers)
    evals = {split: DataLoader(AVDataset(manifest, split, spec, cache, skip=skip), batch_size=cfg.batch_size,
                               num_workers=cfg.num_workers)
             for split in ("val", "test") if manifest.split(split)}
    return train, gen, evals


# ---- checkpoint (safetensors + JSON; no pickle) -------------------------------------------------
@dataclass
class State:
    epochs_done: int = 0
    step: int = 0
    best_val: float = -1.0
    best: dict | None = None      # {"epoch", "val", "test"} at the best validation epoch
    bad_epochs: int = 0


def save_checkpoint(run: Path, model, optimizer, method, state: State) -> None:
    """RUN/checkpoint/{model,optimizer,method}.safetensors + state.json, swapped in whole (never
    half-written). A method with running statistics exposes state_dict()/load_state_dict()."""
    from safetensors.torch import save_file

    tmp, final, old = run / (CHECKPOINT + ".tmp"), run / CHECKPOINT, run / (CHECKPOINT + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp / "model.safetensors"))
    opt = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, per_param in opt["state"].items():
        for name, value in per_param.items():
            if torch.is_tensor(value):
                tensors[f"{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    save_file(tensors, str(tmp / "optimizer.safetensors"))
    method_state = method.state_dict() if hasattr(method, "state_dict") else {}  # running stats (AGM, ...)
    save_file({k: v.detach().cpu().contiguous() for k, v in method_state.items() if torch.is_tensor(v)},
              str(tmp / "method.safetensors"))
    (tmp / "state.json").write_text(json.dumps({
        "state": asdict(state), "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "method": {k: v for k, v in method_state.items() if not torch.is_tensor(v)}}, indent=1) + "\n")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(run: Path, model, optimizer, method, device) -> State:
    from safetensors.torch import load_file

    path = run / CHECKPOINT if (run / CHECKPOINT).is_dir() else run / (CHECKPOINT + ".old")
    if not (path / "state.json").is_file():
        raise ConfigError(f"{run / CHECKPOINT}: no checkpoint to resume; drop --resume to start a new run")
    meta = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(str(path / "model.safetensors"), device=str(device)))
    per_param: dict[int, dict[str, Any]] = {}
    for key, value in load_file(str(path / "optimizer.safetensors"), device=str(device)).items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    for key, value in meta["optimizer"]["scalars"].items():
        idx, name = key.split(".", 1)
        per_param.setdefault(int(idx), {})[name] = value
    for per in per_param.values():  # Adam keeps `step` on the CPU unless capturable/fused
        if "step" in per and torch.is_tensor(per["step"]):
            per["step"] = per["step"].cpu()
    optimizer.load_state_dict({"state": per_param, "param_groups": meta["optimizer"]["param_groups"]})
    if hasattr(method, "load_state_dict"):
        method.load_state_dict({**meta["method"], **load_file(str(path / "method.safetensors"), device=str(device))})
    return State(**meta["state"])


# ---- logs -------------------------------------------------------------------------------------
def read_jsonl(path: Path, upto_epoch: int) -> list[dict]:
    if not path.is_file():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in rows if r["epoch"] <= upto_epoch]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, path)


def default_out(recipe_path: str | Path | dict, method: str) -> Path:
    stem = Path(recipe_path).stem if isinstance(recipe_path, (str, Path)) else "recipe"
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stem}-{method}-{stamp}"


def _fmt_k(logs: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in logs.items() if k.startswith("k_"))


# ---- the run ----------------------------------------------------------------------------------
def train(recipe: str | Path | dict, out: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
          method: str | None = None, data: str | Path | None = None, seed: int | None = None,
          resume: bool = False, quiet: bool = False) -> Path:
    """Train one recipe; return RUN (the bundle of the best validation epoch).

    `method`, `data`, `seed` override method.name, data.manifest, train.seed; `overrides` are `--set`
    strings. A `method` other than the recipe's starts from that method's defaults (the recipe's
    parameters belong to the recipe's method); `--set method.alpha=...` still applies. A new run into
    an existing RUN replaces its logs; `resume` continues from RUN/checkpoint."""
    from mmdeploy.balance import build_method
    from mmdeploy.bundle import save_bundle
    from mmdeploy.models import build_model
    from mmdeploy.plots import plot_accuracy, plot_coefficients

    sets = list(overrides)
    if method and method != load_recipe(recipe, check_files=False).method.name:
        sets.insert(0, f"method={json.dumps({'name': method})}")  # another method: its own defaults
    if data:
        sets.append(f"data.manifest={json.dumps(str(data))}")
    if seed is not None:
        sets.append(f"train.seed={int(seed)}")
    rec = load_recipe(recipe, sets)
    cfg = rec.train
    balancer = build_method(rec.method.name, **rec.method.params)  # parameter errors before any work
    device = pick_device(cfg.device)
    ctx = init_distributed(device)
    run = Path(out) if out else default_out(recipe, rec.method.name)
    if ctx.world > 1:  # rank 0's timestamp names the run for everyone
        shared = [str(run)]
        dist.broadcast_object_list(shared, src=0)
        run = Path(shared[0])
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    spec = rec.data.clip_spec()
    workers = cpu_count()
    progress = Progress(quiet or not ctx.main, every_s=float("inf"))  # off a terminal: the epoch lines only
    manifest, skip = prepare_data(rec, spec, ctx, workers, progress.line)
    train_loader, shuffle_gen, eval_loaders = make_loaders(rec, manifest, spec, ctx, skip)

    seed_everything(cfg.seed)
    model = build_model(balancer.arch(rec.model.model_dump()), len(manifest.classes)).to(device)
    extra_params = balancer.setup(model, cfg.epochs)  # e.g. MCR's decoder; also resolves stage lengths
    net = model
    if ctx.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                      find_unused_parameters=not getattr(balancer, "trains_heads", False))
        balancer.reduce = all_reduce_mean
    optimizer = make_optimizer([*model.parameters(), *extra_params], cfg.optimizer)
    total_steps = cfg.epochs * len(train_loader)

    state = State()
    if resume:
        state = load_checkpoint(run, model, optimizer, balancer, device)
    elif ctx.main:
        shutil.rmtree(run / CHECKPOINT, ignore_errors=True)
        for stale in ("metrics.jsonl", "steps.jsonl"):
            (run / stale).unlink(missing_ok=True)
    if ctx.main:
        run.mkdir(parents=True, exist_ok=True)
    epochs_log = read_jsonl(run / "metrics.jsonl", state.epochs_done) if ctx.main else []
    steps_log = read_jsonl(run / "steps.jsonl", state.epochs_done) if ctx.main else []
    method_meta = {"name": rec.method.name, **rec.method.params, **balancer.notes}
    extra = {"data": {"manifest": str(rec.data.manifest_path), "cache": str(rec.data.cache_path)},
             "recipe": rec.model_dump(mode="json")}

    progress.line(f"training {rec.method.name} on {manifest.path} ({len(train_loader.dataset)} train clips, "
                  f"{len(manifest.classes)} classes) -> {run}" + (f", {ctx.world} processes" if ctx.world > 1 else ""))
    progress.start(total_steps, "train")
    try:
        for epoch in range(state.epochs_done, cfg.epochs):
            if cfg.early_stop and state.bad_epochs >= cfg.early_stop:  # checked here so a resume obeys it too
                progress.line(f"early stop: no validation improvement for {cfg.early_stop} epochs")
                break
            started = time.perf_counter()
            seed_everything(epoch_seed(cfg.seed, epoch))
            shuffle_gen.manual_seed(epoch_seed(cfg.seed, epoch))
            balancer.begin_epoch(model, optimizer, epoch)  # stage switches (pre-training -> fusion)
            train_loader.dataset.set_epoch(epoch)
            if ctx.world > 1:
                train_loader.sampler.set_epoch(epoch)
            net.train()
            losses, hits, seen, rows = [], 0, 0, []
            for batch in train_loader:
                audio, video = batch["audio"].to(device), batch["video"].to(device)
                labels = batch["label"].to(device)
                lr = balancer.lr_factor(epoch) * learning_rate(state.step, cfg.optimizer.lr, cfg.schedule, total_steps)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                outputs, loss, logs = train_step(net, model, balancer, optimizer, audio, video, labels, epoch)
                losses.append(loss)
                hits += (outputs["fused"].argmax(1) == labels).sum().item()
                seen += labels.numel()
                state.step += 1
                rows.append({"epoch": epoch + 1, "step": state.step, "loss": loss, "lr": lr, **logs})
                progress.step(state.step, f"loss {np.mean(losses):.3f} acc {hits / seen:.3f} {_fmt_k(logs)}",
                              description=f"epoch {epoch + 1}")
            if ctx.world > 1:  # BatchNorm running stats: rank 0's everywhere, so all ranks validate one model
                for buf in model.buffers():
                    dist.broadcast(buf, src=0)
            val = summarize(*predict(model, eval_loaders["val"], device))
            state.epochs_done = epoch + 1
            selectable = balancer.selectable(epoch)  # a pre-training epoch's fused head is not the model
            improved = selectable and val["fused_acc"] > state.best_val
            if improved:
                test = summarize(*predict(model, eval_loaders["test"], device)) if "test" in eval_loaders else None
                state.best_val, state.bad_epochs = val["fused_acc"], 0
                state.best = {"epoch": epoch + 1, "val": val, "test": test}
            elif selectable:
                state.bad_epochs += 1
            k_means = {key[2:]: float(np.mean([r[key] for r in rows if key in r]))
                       for key in sorted({k for r in rows for k in r if k.startswith("k_")})}
            totals = torch.tensor([sum(losses), len(losses), hits, seen], dtype=torch.float64, device=device)
            if ctx.world > 1:  # train loss and accuracy over all ranks' batches
                dist.all_reduce(totals)
            record = {"epoch": epoch + 1, "train_loss": (totals[0] / totals[1]).item(),
                      "train_acc": (totals[2] / totals[3]).item(),
                      "val": val, "k": k_means, "lr": lr, "time_s": round(time.perf_counter() - started, 3),
                      "best": improved}
            if balancer.stage(epoch) is not None:
                record["stage"] = balancer.stage(epoch)
            if ctx.main:
                if improved:
                    save_bundle(run, model, manifest.classes, spec, method_meta,
                                {"best_epoch": epoch + 1, "val": val, "test": test}, extra)
                epochs_log.append(record)
                steps_log.extend(rows)
                write_jsonl(run / "metrics.jsonl", epochs_log)
                write_jsonl(run / "steps.jsonl", steps_log)
                save_checkpoint(run, model, optimizer, balancer, state)
            per = val["per_modality_acc"]
            progress.line(f"epoch {epoch + 1}/{cfg.epochs} loss {record['train_loss']:.3f} val fused "
                          f"{val['fused_acc']:.3f} audio {per['audio']:.3f} video {per['video']:.3f} "
                          f"{' '.join(f'k_{m}={v:.2f}' for m, v in k_means.items())} "
                          f"({record['time_s']:.1f}s){' *' if improved else ''}")
    finally:
        progress.close()
    if ctx.main and epochs_log:
        plot_accuracy(epochs_log, run / "plots" / "accuracy.png")
        plot_coefficients(steps_log, run / "plots" / "coefficients.png")
    if ctx.world > 1:
        dist.barrier()
    if state.best:
        best = state.best
        test_txt = f", test fused {best['test']['fused_acc']:.3f}" if best.get("test") else ""
        progress.line(f"best epoch {best['epoch']}: val fused {best['val']['fused_acc']:.3f}{test_txt} -> {run}")
    return run
