"""Balancing methods: MLB and its baselines, over logits, labels and explicit parameter groups.

One training step, for every method:

    outputs = method.forward(model, audio, video)            # model(audio, video); AGM adds passes
    method.loss(outputs, labels).backward()
    logs = method.after_backward(model, outputs, labels, epoch)   # scales grads; floats to log
    optimizer.step()

Scores are batch means computed on the logits' device with one gather (no per-sample loops). Under DDP
set `method.reduce` to a function returning the mean of a tensor over ranks: scores pass through it
before any coefficient is computed, so every rank applies the same k to the same averaged gradient.
Parameter groups come from `model.param_groups()` (read once per model, DDP's `.module` unwrapped):
modality m = its encoder + its head + its fusion slice; "shared" (e.g. the fusion bias) is never scaled.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mmdeploy.errors import ConfigError

Outputs = dict[str, Any]


# ---------------------------------------------------------------- pure functions over scores

def true_class_probs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[M, B, C] logits, [B] labels -> [M, B]: softmax probability of the true class, per head and sample."""
    index = labels.reshape(1, -1, 1).expand(logits.shape[0], -1, 1)
    return logits.softmax(dim=-1).gather(2, index).squeeze(2)


def true_class_scores(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[M, B, C], [B] -> [M]: s_m, the batch mean of head m's true-class probability."""
    return true_class_probs(logits, labels).mean(dim=1)


def true_class_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[M, B, C], [B] -> [M]: batch mean of -log p(true class), probabilities clamped at 1e-8 (AGM)."""
    return -true_class_probs(logits, labels).clamp_min(1e-8).log().mean(dim=1)


def others_mean(values: torch.Tensor) -> torch.Tensor:
    """[M] -> [M]: for each m, the mean of the other M-1 entries (M >= 2)."""
    if values.shape[0] < 2:
        raise ValueError(f"balancing needs at least 2 modalities, got {values.shape[0]}")
    return (values.sum() - values) / (values.shape[0] - 1)


def mlb_ratios(scores: torch.Tensor) -> torch.Tensor:
    """r_m = mean of the other modalities' scores / s_m (r > 1: modality m is behind)."""
    return others_mean(scores) / scores.clamp_min(torch.finfo(scores.dtype).tiny)


def mlb_coefficients(ratios: torch.Tensor, alpha: float, beta: float | None = None) -> torch.Tensor:
    """k = 1 + tanh(alpha (r - 1)); beta variant: 1 + (beta - 1) tanh(alpha (r - 1)) where r > 1."""
    t = torch.tanh(alpha * (ratios - 1.0))
    if beta is None:
        return 1.0 + t
    return 1.0 + torch.where(ratios > 1.0, (beta - 1.0) * t, t)


def ogm_coefficients(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """OGM: rho_m = s_m / mean of the others; the leading modality (rho > 1) gets 1 - tanh(alpha rho), the rest 1."""
    rho = scores / others_mean(scores).clamp_min(torch.finfo(scores.dtype).tiny)
    return torch.where(rho > 1.0, 1.0 - torch.tanh(alpha * rho), torch.ones_like(rho))


def agm_coefficients(losses: torch.Tensor, running: torch.Tensor, alpha: float, clip: float) -> torch.Tensor:
    """AGM: r_m = exp(mean_{j != m} L_j - L_m) now and r*_m from the running mean losses;
    k_m = exp(alpha * min(r*_m - r_m, clip))."""
    now = torch.exp(others_mean(losses) - losses)
    ref = torch.exp(others_mean(running) - running)
    return torch.exp(alpha * (ref - now).clamp(max=clip))


def scale_grads(groups: Sequence[Sequence[torch.Tensor]], coefficients: torch.Tensor) -> None:
    """grad *= k_m for every parameter of group m (one fused multiply per group, k stays on device)."""
    for params, k in zip(groups, coefficients):
        grads = [p.grad for p in params if p.grad is not None]
        if grads:
            torch._foreach_mul_(grads, k)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _logs(modalities: Sequence[str], **values: torch.Tensor) -> dict[str, float]:
    """{"k_audio": .., "s_video": ..}: one device->host copy for all logged numbers."""
    rows = torch.stack(list(values.values())).tolist()
    return {f"{key}_{m}": v for key, row in zip(values, rows) for m, v in zip(modalities, row)}


# ---------------------------------------------------------------- parameter checks

def _number(method: str, key: str, value: Any, low: float, inclusive: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= low if inclusive else value > low)
    if not ok:
        raise ConfigError(f"method.{key}: {method} needs a number {'>=' if inclusive else '>'} {low}, got {value!r}")
    return float(value)


def _epochs(method: str, start: Any, end: Any) -> tuple[int, int | None]:
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ConfigError(f"method.start_epoch: {method} needs an integer >= 0, got {start!r}")
    if end is not None and (not isinstance(end, int) or isinstance(end, bool) or end < start):
        raise ConfigError(f"method.end_epoch: {method} needs null or an integer >= start_epoch ({start}), got {end!r}")
    return start, end


class EpochWindow:
    """Modulation is active for start_epoch <= epoch <= end_epoch (None: no end)."""

    start_epoch: int
    end_epoch: int | None

    def active(self, epoch: int) -> bool:
        return self.start_epoch <= epoch and (self.end_epoch is None or epoch <= self.end_epoch)


class GroupCache:
    """Parameter groups of one model, computed once (by `pick(core_model)`) and reused every step."""

    def __init__(self, pick: Callable[[nn.Module], dict[str, list[torch.Tensor]]]):
        self.pick = pick
        self.model: nn.Module | None = None
        self.groups: dict[str, list[torch.Tensor]] = {}

    def __call__(self, model: nn.Module) -> dict[str, list[torch.Tensor]]:
        core = getattr(model, "module", model)
        if core is not self.model:
            self.model, self.groups = core, self.pick(core)
        return self.groups


def _modality_groups(core: nn.Module) -> dict[str, list[torch.Tensor]]:
    return {m: params for m, params in core.param_groups().items() if m != "shared"}


def _encoder_groups(core: nn.Module) -> dict[str, list[torch.Tensor]]:
    return {m: list(encoder.parameters()) for m, encoder in core.encoders.items()}


# ---------------------------------------------------------------- methods

class Joint:
    """Single-loss joint training: CE(fused) only; the unimodal heads get no gradient.

    `trains_heads` says whether the loss reaches the unimodal heads (DDP needs
    find_unused_parameters=True when it does not)."""

    name = "joint"
    trains_heads = False

    def __init__(self):
        self.reduce: Callable[[torch.Tensor], torch.Tensor] = _identity

    def forward(self, model: nn.Module, audio: torch.Tensor | None, video: torch.Tensor | None) -> Outputs:
        return model(audio, video)

    def loss(self, outputs: Outputs, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs["fused"], labels)

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        return {}


class MultiLoss(Joint):
    """CE(fused) + CE(audio) + CE(video), no modulation (heads of absent modalities are skipped)."""

    name = "multiloss"
    trains_heads = True

    def loss(self, outputs: Outputs, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(outputs["fused"], labels)
        for m in ("audio", "video"):
            if outputs.get(m) is not None:
                loss = loss + F.cross_entropy(outputs[m], labels)
        return loss


class MLB(MultiLoss, EpochWindow):
    """Multi-loss balanced gradient modulation (Kontras et al., BMVC 2024).

    After backward: s_m from the unimodal heads, r_m = others / self, k_m = 1 + tanh(alpha (r_m - 1))
    (variant "beta": 1 + (beta - 1) tanh(...) where r_m > 1), grads of group m *= k_m, within
    [start_epoch, end_epoch]. `beta` alone selects the beta variant; `variant: beta` without `beta` is
    an error (the reference silently used beta = 0 there, turning the speed-up into a slow-down)."""

    name = "mlb"

    def __init__(self, alpha: float = 0.8, beta: float | None = None, variant: str | None = None,
                 start_epoch: int = 0, end_epoch: int | None = None):
        super().__init__()
        self.alpha = _number("mlb", "alpha", alpha, 0.0)
        variant = variant if variant is not None else ("beta" if beta is not None else "tanh")
        if variant not in ("tanh", "beta"):
            raise ConfigError(f"method.variant: {variant!r} unknown for mlb; choose tanh or beta")
        if variant == "beta" and beta is None:
            raise ConfigError("method.beta: mlb variant beta needs beta (the largest k of a lagging modality, "
                              "e.g. 10); without it the lagging modality would be slowed down instead")
        if variant == "tanh" and beta is not None:
            raise ConfigError("method.beta: only used by mlb variant beta; remove beta or set variant: beta")
        self.beta = None if beta is None else _number("mlb", "beta", beta, 1.0, inclusive=True)
        self.start_epoch, self.end_epoch = _epochs("mlb", start_epoch, end_epoch)
        self.groups = GroupCache(_modality_groups)

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        groups = self.groups(model)
        mods = [m for m in groups if outputs.get(m) is not None]
        if len(mods) < 2:
            return {}
        with torch.no_grad():
            scores = self.reduce(true_class_scores(torch.stack([outputs[m].detach() for m in mods]), labels))
            ratios = mlb_ratios(scores)
            if self.active(epoch):
                k = mlb_coefficients(ratios, self.alpha, self.beta)
                scale_grads([groups[m] for m in mods], k)
            else:
                k = torch.ones_like(ratios)
        return _logs(mods, s=scores, r=ratios, k=k)


class PartialLogits(Joint):
    """Base of OGM and MSLR: loss CE(fused); forward adds "partial" {m: W_m f_m + b/2} (detached), the
    late-fusion layer's per-modality share of the fused logits. Other fusions are refused (ConfigError)."""

    def forward(self, model: nn.Module, audio: torch.Tensor | None, video: torch.Tensor | None) -> Outputs:
        core = getattr(model, "module", model)
        partial_logits = getattr(core.fusion, "partial_logits", None)
        if partial_logits is None:
            kind = core.arch.get("fusion", {}).get("type", "late")
            raise ConfigError(f"method.name: {self.name} needs model.fusion.type late (its scores are the "
                              f"partial logits W_m f_m + b/2 of the late-fusion layer); got fusion {kind!r}")
        outputs = model(audio, video, with_features=True)
        if len(outputs["features"]) >= 2:
            with torch.no_grad():
                outputs["partial"] = partial_logits({m: f.detach() for m, f in outputs["features"].items()})
        return outputs


class OGM(PartialLogits, EpochWindow):
    """OGM (Peng et al. 2022) as run in the MLB paper's code: loss CE(fused); scores from the
    late-fusion partial logits; the leading modality's encoder grads *= 1 - tanh(alpha rho)."""

    name = "ogm"
    noise = False

    def __init__(self, alpha: float = 0.8, start_epoch: int = 0, end_epoch: int | None = None):
        super().__init__()
        self.alpha = _number(self.name, "alpha", alpha, 0.0)
        self.start_epoch, self.end_epoch = _epochs(self.name, start_epoch, end_epoch)
        self.groups = GroupCache(_encoder_groups)

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        if "partial" not in outputs:
            return {}
        groups = self.groups(model)
        mods = list(outputs["partial"])
        with torch.no_grad():
            scores = self.reduce(true_class_scores(torch.stack([outputs["partial"][m] for m in mods]), labels))
            if not self.active(epoch):
                return _logs(mods, s=scores, k=torch.ones_like(scores))
            k = ogm_coefficients(scores, self.alpha)
            if self.noise:
                for m, km in zip(mods, k):
                    for p in groups[m]:
                        if p.grad is not None:
                            add_gradient_noise(p.grad, km)
            else:
                scale_grads([groups[m] for m in mods], k)
        return _logs(mods, s=scores, k=k)


def add_gradient_noise(grad: torch.Tensor, k: torch.Tensor) -> None:
    """OGM-GE: grad <- k * grad + N(0, std(grad) + 1e-8), std of the unscaled gradient."""
    std = grad.std() if grad.numel() > 1 else grad.new_zeros(())
    grad.mul_(k).add_(torch.randn_like(grad) * (std + 1e-8))


class OGMGE(OGM):
    """OGM-GE: OGM plus Gaussian noise with each encoder gradient's own std (generalisation enhancement)."""

    name = "ogm-ge"
    noise = True


class AGM(Joint, EpochWindow):
    """AGM (Li et al. 2023) as run in the MLB paper's code. Two extra passes in eval mode under
    no_grad with zeroed audio / zeroed video give z(0,v), z(a,0); z_a = (z - z(0,v) + z(a,0)) / 2 and
    z_v likewise. Scores are mean -log p(true class); k_m = exp(alpha * min(r*_m - r_m, clip)) with r*
    from running means (updated after use). Loss CE(fused).

    k_m scales the grads of modality m's parameter group after backward. With no_grad passes, hooks on
    z_m (the reference) would only rescale dL/dz uniformly by (k_a + k_v) / 2, so the per-modality
    scaling is applied to the groups instead. Then, as the reference trainer does, if any fusion grad
    exceeds +-1 all grads are clipped to total norm `grad_clip`."""

    name = "agm"

    def __init__(self, alpha: float = 1.5, clip: float = 10.0, grad_clip: float = 1.0,
                 start_epoch: int = 0, end_epoch: int | None = None):
        super().__init__()
        self.alpha = _number("agm", "alpha", alpha, 0.0)
        self.clip = _number("agm", "clip", clip, 0.0)
        self.grad_clip = _number("agm", "grad_clip", grad_clip, 0.0)
        self.start_epoch, self.end_epoch = _epochs("agm", start_epoch, end_epoch)
        self.groups = GroupCache(_modality_groups)
        self.running: torch.Tensor | None = None
        self.steps = 0

    def state_dict(self) -> dict[str, Any]:
        """Running mean losses and their step count, for an exact --resume (tensors + plain values)."""
        return {"steps": self.steps, **({"running": self.running} if self.running is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.running = int(state.get("steps", 0)), state.get("running")

    def forward(self, model: nn.Module, audio: torch.Tensor | None, video: torch.Tensor | None) -> Outputs:
        outputs = model(audio, video)
        if audio is None or video is None:
            return outputs
        was_training = model.training
        model.eval()
        with torch.no_grad():
            no_audio = model(torch.zeros_like(audio), video)["fused"]
            no_video = model(audio, torch.zeros_like(video))["fused"]
        model.train(was_training)
        z = outputs["fused"].detach()
        outputs["agm"] = {"audio": 0.5 * (z - no_audio + no_video), "video": 0.5 * (z - no_video + no_audio)}
        return outputs

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        if "agm" not in outputs:
            return {}
        groups = self.groups(model)
        mods = list(outputs["agm"])
        with torch.no_grad():
            losses = self.reduce(true_class_losses(torch.stack([outputs["agm"][m] for m in mods]), labels))
            if self.running is None:
                self.running = torch.zeros_like(losses)
            if self.active(epoch):
                k = agm_coefficients(losses, self.running, self.alpha, self.clip)
                scale_grads([groups[m] for m in mods], k)
                self._clip_if_fusion_spikes(getattr(model, "module", model))
            else:
                k = torch.ones_like(losses)
            self.running = (self.running * self.steps + losses) / (self.steps + 1)
            self.steps += 1
        return _logs(mods, s=losses, k=k)

    def _clip_if_fusion_spikes(self, core: nn.Module) -> None:
        """Clip all grads to total norm grad_clip when some fusion grad leaves [-1, 1] (no host sync)."""
        fusion = [p.grad for p in core.fusion.parameters() if p.grad is not None]
        grads = [p.grad for p in core.parameters() if p.grad is not None]
        if not fusion or not grads:
            return
        spike = torch.stack([g.abs().max() for g in fusion]).max() > 1.0
        norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
        factor = torch.where(spike, (self.grad_clip / (norm + 1e-6)).clamp(max=1.0), torch.ones_like(norm))
        torch._foreach_mul_(grads, factor)


class EpochStats:
    """Per-epoch sums kept on the device: `add` every step, `close` when a new epoch starts."""

    def __init__(self):
        self.epoch: int | None = None
        self.sums: torch.Tensor | None = None

    def add(self, epoch: int, values: torch.Tensor) -> torch.Tensor | None:
        """Accumulate `values`; returns the previous epoch's sums when `epoch` is a new one, else None."""
        closed = None
        if self.epoch is not None and epoch != self.epoch:
            closed, self.sums = self.sums, None
        self.epoch = epoch
        self.sums = values.clone() if self.sums is None else self.sums + values
        return closed

    def state_dict(self) -> dict[str, Any]:
        return {"stats.epoch": self.epoch, **({"stats.sums": self.sums} if self.sums is not None else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.sums = state.get("stats.epoch"), state.get("stats.sums")


class MSLR(PartialLogits):
    """Modality-specific learning rates as run in the MLB paper's code: loss CE(fused); every
    step encoder m's grads *= rho_m * lr_scale[m], with rho_m = acc_m / mean of its last `memory`
    epoch accuracies (1 until that many are stored), acc_m = accuracy of the partial logits.

    Deviation: acc_m is measured on the previous epoch's training batches, since a method sees no
    validation data (the reference reads last epoch's validation accuracy)."""

    name = "mslr"

    def __init__(self, lr_scale: dict[str, float] | None = None, memory: int = 5):
        super().__init__()
        lr_scale = {"audio": 0.9, "video": 1.1} if lr_scale is None else lr_scale
        if not isinstance(lr_scale, dict) or set(lr_scale) != {"audio", "video"}:
            raise ConfigError(f"method.lr_scale: mslr needs {{audio: x, video: y}}, got {lr_scale!r}")
        self.lr_scale = {m: _number("mslr", f"lr_scale.{m}", v, 0.0) for m, v in lr_scale.items()}
        if not isinstance(memory, int) or isinstance(memory, bool) or memory < 1:
            raise ConfigError(f"method.memory: mslr needs a positive integer (epochs), got {memory!r}")
        self.memory = memory
        self.groups = GroupCache(_encoder_groups)
        self.stats = EpochStats()
        self.history: list[torch.Tensor] = []
        self.rho: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        """This epoch's sums, past epoch accuracies and the current rho, for an exact --resume."""
        state = self.stats.state_dict()
        if self.history:
            state["history"] = torch.stack(self.history)
        if self.rho is not None:
            state["rho"] = self.rho
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)
        history = state.get("history")
        self.history = [] if history is None else list(history.unbind(0))
        self.rho = state.get("rho")

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        if "partial" not in outputs:
            return {}
        groups = self.groups(model)
        mods = list(outputs["partial"])
        with torch.no_grad():
            logits = torch.stack([outputs["partial"][m] for m in mods])
            correct = (logits.argmax(dim=-1) == labels).sum(dim=1).to(logits.dtype)
            closed = self.stats.add(epoch, torch.cat([correct, correct.new_tensor([labels.numel()])]))
            if closed is not None:
                closed = self.reduce(closed)
                acc = closed[:-1] / closed[-1]
                if len(self.history) >= self.memory:
                    self.rho = acc / torch.stack(self.history[-self.memory:]).mean(dim=0)
                self.history.append(acc)
            rho = torch.ones(len(mods), device=logits.device) if self.rho is None else self.rho
            k = rho * torch.tensor([self.lr_scale[m] for m in mods], device=logits.device)
            scale_grads([groups[m] for m in mods], k)
        return _logs(mods, rho=rho, k=k)


class PMR(Joint, EpochWindow):
    """Prototypical modal rebalance (Fan et al. 2023) as run in the MLB paper's code. Prototypes
    P_m[c] = class means of the features f_m (EMA with `momentum`); q_m = -||f_m - P_m[c]||; s_m = mean
    softmax(q_m)[y]; the lagging modality (s_m below the others' mean) gets alpha * CE(q_m) added to
    CE(fused), within [start_epoch, end_epoch] (judged by the epoch of the previous step).

    Deviations: prototypes come from the previous epoch's training features (the reference runs an
    extra pass at each epoch start), so epoch 0 trains with CE(fused) only; features are not
    BatchNorm-normalised (the MLB repo's addition, whose BN state lived outside the model)."""

    name = "pmr"

    def __init__(self, alpha: float = 1.75, momentum: float = 0.0, start_epoch: int = 0, end_epoch: int | None = None):
        super().__init__()
        self.alpha = _number("pmr", "alpha", alpha, 0.0)
        momentum = _number("pmr", "momentum", momentum, 0.0, inclusive=True)
        if momentum >= 1.0:
            raise ConfigError(f"method.momentum: pmr needs a number in [0, 1), got {momentum!r}")
        self.momentum = momentum
        self.start_epoch, self.end_epoch = _epochs("pmr", start_epoch, end_epoch)
        self.stats = EpochStats()
        self.prototypes: dict[str, torch.Tensor] = {}
        self.last: dict[str, torch.Tensor] = {}

    def state_dict(self) -> dict[str, Any]:
        """This epoch's feature sums and the class prototypes, for an exact --resume."""
        return {**self.stats.state_dict(), **{f"prototypes.{m}": p for m, p in self.prototypes.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stats.load_state_dict(state)
        self.prototypes = {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("prototypes.")}

    def forward(self, model: nn.Module, audio: torch.Tensor | None, video: torch.Tensor | None) -> Outputs:
        return model(audio, video, with_features=True)

    def loss(self, outputs: Outputs, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(outputs["fused"], labels)
        feats = outputs["features"]
        epoch = self.stats.epoch  # of the last after_backward: the loss does not see the epoch
        if len(feats) < 2 or set(self.prototypes) != set(feats) or epoch is None or not self.active(epoch):
            return loss
        mods = list(feats)
        q = torch.stack([-torch.cdist(feats[m], self.prototypes[m]) for m in mods])     # [M, B, C]
        scores = self.reduce(true_class_scores(q.detach(), labels))
        weights = self.alpha * (scores < others_mean(scores)).to(q.dtype)
        self.last = {"s": scores, "w": weights}
        losses = torch.stack([F.cross_entropy(q[i], labels) for i in range(len(mods))])
        return loss + (weights * losses).sum()

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        feats = outputs["features"]
        if len(feats) < 2:
            return {}
        mods = list(feats)
        with torch.no_grad():
            f = torch.stack([feats[m].detach() for m in mods])                            # [M, B, D]
            classes = getattr(model, "module", model).num_classes
            sums = f.new_zeros(len(mods), classes, f.shape[-1] + 1)
            sums.index_add_(1, labels, torch.cat([f, torch.ones_like(f[..., :1])], dim=-1))
            closed = self.stats.add(epoch, sums)
            if closed is not None:
                self._update_prototypes(mods, self.reduce(closed))
        logs, self.last = self.last, {}
        return _logs(mods, **logs) if logs else {}

    def _update_prototypes(self, mods: list[str], sums: torch.Tensor) -> None:
        count = sums[..., -1:]
        means = sums[..., :-1] / count.clamp(min=1.0)
        for i, m in enumerate(mods):
            old = self.prototypes.get(m)
            new = means[i] if old is None else torch.where(count[i] > 0, self.momentum * old + (1 - self.momentum)
                                                           * means[i], old)
            self.prototypes[m] = new


METHODS = {cls.name: cls for cls in (Joint, MultiLoss, MLB, OGM, OGMGE, AGM, MSLR, PMR)}


def build_method(name: str, **params: Any) -> Joint:
    """The balancing method `name` with its recipe parameters; unknown names/keys raise ConfigError."""
    if name not in METHODS:
        raise ConfigError(f"method.name: {name!r} unknown; choose one of {', '.join(METHODS)}")
    cls = METHODS[name]
    known = list(inspect.signature(cls).parameters)
    for key in params:
        if key not in known:
            raise ConfigError(f"method.{key}: not a parameter of {name} (it takes {', '.join(known) or 'none'})")
    return cls(**params)
