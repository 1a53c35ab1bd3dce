"""Gradient- and loss-modulation baselines as run in the MLB paper's code: OGM, OGM-GE, AGM, MSLR, PMR."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmdeploy.balance.basic import Joint
from mmdeploy.balance.core import (EpochStats, EpochWindow, GroupCache, Outputs, Params, check_window, encoder_groups,
                                   logs, modality_groups, others_mean, scale_grads, true_class_losses,
                                   true_class_scores, unwrap)
from mmdeploy.errors import ConfigError


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


_START = Field(0, ge=0, description="an integer >= 0")
_END = Field(None, ge=0, description="null or an integer >= start_epoch")


class OGMParams(Params):
    alpha: float = Field(0.8, gt=0, description="a number > 0")
    start_epoch: int = _START
    end_epoch: int | None = _END


class AGMParams(Params):
    alpha: float = Field(1.5, gt=0, description="a number > 0")
    clip: float = Field(10.0, gt=0, description="a number > 0 (cap of alpha's exponent argument)")
    grad_clip: float = Field(1.0, gt=0, description="a number > 0 (total grad norm when a fusion grad spikes)")
    start_epoch: int = _START
    end_epoch: int | None = _END


class LrScale(Params):
    audio: float = Field(gt=0, description="a number > 0")
    video: float = Field(gt=0, description="a number > 0")


class MSLRParams(Params):
    lr_scale: LrScale = Field(default_factory=lambda: LrScale(audio=0.9, video=1.1),
                              description="{audio: x, video: y}, both > 0")
    memory: int = Field(5, ge=1, description="a positive integer (epochs)")


class PMRParams(Params):
    alpha: float = Field(1.75, gt=0, description="a number > 0")
    momentum: float = Field(0.0, ge=0, lt=1, description="a number in [0, 1)")
    start_epoch: int = _START
    end_epoch: int | None = _END


class PartialLogits(Joint):
    """Base of OGM and MSLR: loss CE(fused); forward adds "partial" {m: W_m f_m + b/2} (detached), the
    late-fusion layer's per-modality share of the fused logits. Other fusions are refused (ConfigError)."""

    def forward(self, model: nn.Module, audio: torch.Tensor | None, video: torch.Tensor | None) -> Outputs:
        core = unwrap(model)
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

    Params = OGMParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        check_window(self.name, self.start_epoch, self.end_epoch)
        self.groups = GroupCache(encoder_groups)

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        if "partial" not in outputs:
            return {}
        groups = self.groups(model)
        mods = list(outputs["partial"])
        with torch.no_grad():
            scores = self.reduce(true_class_scores(torch.stack([outputs["partial"][m] for m in mods]), labels))
            if not self.active(epoch):
                return logs(mods, s=scores, k=torch.ones_like(scores))
            k = ogm_coefficients(scores, self.alpha)
            if self.noise:
                for m, km in zip(mods, k):
                    for p in groups[m]:
                        if p.grad is not None:
                            add_gradient_noise(p.grad, km)
            else:
                scale_grads([groups[m] for m in mods], k)
        return logs(mods, s=scores, k=k)


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

    Params = AGMParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        check_window(self.name, self.start_epoch, self.end_epoch)
        self.groups = GroupCache(modality_groups)
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
                self._clip_if_fusion_spikes(unwrap(model))
            else:
                k = torch.ones_like(losses)
            self.running = (self.running * self.steps + losses) / (self.steps + 1)
            self.steps += 1
        return logs(mods, s=losses, k=k)

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


class MSLR(PartialLogits):
    """Modality-specific learning rates as run in the MLB paper's code: loss CE(fused); every
    step encoder m's grads *= rho_m * lr_scale[m], with rho_m = acc_m / mean of its last `memory`
    epoch accuracies (1 until that many are stored), acc_m = accuracy of the partial logits.

    Deviation: acc_m is measured on the previous epoch's training batches, since a method sees no
    validation data (the reference reads last epoch's validation accuracy)."""

    name = "mslr"

    Params = MSLRParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.groups = GroupCache(encoder_groups)
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
        return logs(mods, rho=rho, k=k)


class PMR(Joint, EpochWindow):
    """Prototypical modal rebalance (Fan et al. 2023) as run in the MLB paper's code. Prototypes
    P_m[c] = class means of the features f_m (EMA with `momentum`); q_m = -||f_m - P_m[c]||; s_m = mean
    softmax(q_m)[y]; the lagging modality (s_m below the others' mean) gets alpha * CE(q_m) added to
    CE(fused), within [start_epoch, end_epoch] (judged by the epoch of the previous step).

    Deviations: prototypes come from the previous epoch's training features (the reference runs an
    extra pass at each epoch start), so epoch 0 trains with CE(fused) only; features are not
    BatchNorm-normalised (the MLB repo's addition, whose BN state lived outside the model)."""

    name = "pmr"

    Params = PMRParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        check_window(self.name, self.start_epoch, self.end_epoch)
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
            classes = unwrap(model).num_classes
            sums = f.new_zeros(len(mods), classes, f.shape[-1] + 1)
            sums.index_add_(1, labels, torch.cat([f, torch.ones_like(f[..., :1])], dim=-1))
            closed = self.stats.add(epoch, sums)
            if closed is not None:
                self._update_prototypes(mods, self.reduce(closed))
        last, self.last = self.last, {}
        return logs(mods, **last) if last else {}

    def _update_prototypes(self, mods: list[str], sums: torch.Tensor) -> None:
        count = sums[..., -1:]
        means = sums[..., :-1] / count.clamp(min=1.0)
        for i, m in enumerate(mods):
            old = self.prototypes.get(m)
            new = means[i] if old is None else torch.where(count[i] > 0, self.momentum * old + (1 - self.momentum)
                                                           * means[i], old)
            self.prototypes[m] = new
