"""MCR, the Multimodal Competition Regularizer (Kontras et al., "Balancing Multimodal Training Through
Game-Theoretic Regularization", NeurIPS 2025, arXiv 2411.07335), in our own words.

    L = CE(fused) + w_uni * sum_m CE(z_m)                       task loss (+ light unimodal heads)
      + lambda * L_MIPD   (game over the perturbed differences)  unique information of each modality
      + w_con * L_Con     (supervised contrastive, f_a vs f_v)   shared information
      + w_ceb * L_CEB     (reconstruct [f_a; f_v] from the detached prediction)  drop task-irrelevant info

Perturbed difference of modality n: permute n's latent across the batch (S random permutations, the
other modalities' latents kept, rows repeated S times) and measure J(n) = JSD(prediction with n permuted,
prediction) — how much the prediction depends on n. Each modality is a player; the gradient of player m
(its encoder, head and fusion slice) is taken from terms in which only m's branch carries gradient
(`through` m, every other branch detached), and the game sets how m treats the others' terms:

    player m minimises  -J(m | through m) - k * sum_{n != m} J(n | through m)
    greedy k = -1 (raise your own influence, lower the others'), independent k = 0,
    collaborative k = +1 (everyone raises every influence: terms with no branch detached)

The unperturbed prediction in the JSD keeps its gradient; in the greedy game its contributions cancel
exactly (J(n | through m) has the same value for every m).
"""
from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mmdeploy.balance.basic import Joint, unimodal_loss
from mmdeploy.balance.core import Outputs, Params, unwrap
from mmdeploy.balance.staged import LR_SCALE, Staged, resolve_pretrain_epochs
from mmdeploy.errors import ConfigError

GAMES = {"greedy": -1.0, "independent": 0.0, "collaborative": 1.0}


# ---------------------------------------------------------------- pure functions

def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Batch mean of JSD(softmax(p) || softmax(q)) = (KL(P||M) + KL(Q||M)) / 2, M = (P + Q) / 2, in nats."""
    log_p, log_q = F.log_softmax(logits_p, dim=-1), F.log_softmax(logits_q, dim=-1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
    kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
    kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
    return (0.5 * (kl_p + kl_q)).mean()


def batch_permutations(batch: int, count: int, device: torch.device | str = "cpu",
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """[count * batch] row indices: `count` random permutations of 0..batch-1, one after the other."""
    return torch.cat([torch.randperm(batch, generator=generator) for _ in range(count)]).to(device)


def fuse_through(fusion: nn.Module, inputs: dict[str, torch.Tensor], through: str | None) -> torch.Tensor:
    """Fused logits in which only modality `through`'s branch carries gradient (None: every branch).
    A late fusion detaches the other modalities' partial logits W_n f_n + b/M (so W_n is not trained by
    this term, as in the reference); other fusions detach the other modalities' inputs."""
    if through is None:
        return fusion(inputs)
    partial = getattr(fusion, "partial_logits", None)
    if partial is not None:
        return sum(z if m == through else z.detach() for m, z in partial(inputs).items())
    return fusion({m: x if m == through else x.detach() for m, x in inputs.items()})


Terms = dict[tuple[str, str | None], torch.Tensor]


def perturbed_differences(fusion: nn.Module, inputs: dict[str, torch.Tensor], fused: torch.Tensor,
                          index: torch.Tensor, collaborative: bool = False) -> Terms:
    """{(permuted n, through m): J} with J = JSD(fusion of inputs with n's rows taken in `index` order and
    the others repeated, fused prediction repeated). `index` holds S permutations of the batch ([S*B]).
    collaborative: only through=None terms (no branch detached)."""
    batch = fused.shape[0]
    repeat = torch.arange(batch, device=fused.device).repeat(index.numel() // batch)
    base = fused[repeat]
    repeated = {m: x[repeat] for m, x in inputs.items()}
    terms = {}
    for n, x in inputs.items():
        mixed = {**repeated, n: x[index]}
        for m in ([None] if collaborative else list(inputs)):
            terms[(n, m)] = js_divergence(fuse_through(fusion, mixed, m), base)
    return terms


def game_loss(terms: Terms, modalities: list[str], game: str) -> torch.Tensor:
    """L_MIPD of the game: greedy / independent: sum_m [-J(m|m) - k sum_{n != m} J(n|m)], k = -1 / 0;
    collaborative: -sum_n J(n | no branch detached)."""
    if game == "collaborative":
        return -torch.stack([terms[(n, None)] for n in modalities]).sum()
    k = GAMES[game]
    total = []
    for m in modalities:
        total.append(-terms[(m, m)])
        if k:
            total += [-k * terms[(n, m)] for n in modalities if n != m]
    return torch.stack(total).sum()


def supervised_contrastive(features: list[torch.Tensor], labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised NT-Xent over the L2-normalised latents of every modality (rows of all modalities pooled,
    labels repeated): for each positive pair (i, j), i != j with the same label,
    -log(e^{s_ij} / (e^{s_ij} + sum_{k: y_k != y_i} e^{s_ik})), s = cosine / temperature; mean over the
    positive pairs (0 if there are none)."""
    z = F.normalize(torch.cat(features), dim=-1)
    y = labels.repeat(len(features))
    sim = z @ z.T / temperature
    same = y[:, None] == y[None, :]
    eye = torch.eye(len(y), dtype=torch.bool, device=z.device)
    positive = same & ~eye
    if not positive.any():
        return sim.new_zeros(())
    negatives = torch.where(same, torch.full_like(sim, -torch.inf), sim)             # [N, N]
    neg_lse = torch.logsumexp(negatives, dim=1, keepdim=True).expand_as(sim)         # log sum_k e^{s_ik}
    denominator = torch.logaddexp(sim, neg_lse)                                      # log(e^{s_ij} + sum_k)
    return (denominator - sim)[positive].mean()


def ceb_reconstruction(decoder: nn.Module, fused: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
    """MSE between decoder(fused prediction, detached) and the concatenated latents [f_a; f_v]: the
    latents are pushed towards what the prediction explains (the reference's CEB surrogate)."""
    return F.mse_loss(decoder(fused.detach()), torch.cat(features, dim=-1))


def make_decoder(classes: int, dims: list[int]) -> nn.Sequential:
    """prediction [C] -> hidden (the widest latent) -> [sum of latent dims], no biases."""
    hidden = max(dims)
    return nn.Sequential(nn.Linear(classes, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, sum(dims), bias=False))


# ---------------------------------------------------------------- the method

class MCRParams(Params):
    mipd: float = Field(0.1, ge=0, description="a number >= 0 (lambda_M, weight of the perturbed-difference game)")
    unimodal_weight: float = Field(0.01, ge=0, description="a number >= 0 (weight of each head's own CE)")
    permutations: int = Field(32, ge=1, description="an integer >= 1 (batch permutations per step)")
    game: Literal["greedy", "independent", "collaborative"] = Field("greedy", description="greedy, independent "
                                                                    "or collaborative")
    contrastive: float = Field(1.0, ge=0, description="a number >= 0 (weight of the supervised contrastive term)")
    temperature: float = Field(0.1, gt=0, description="a number > 0 (contrastive temperature)")
    ceb: float = Field(0.0, ge=0, description="a number >= 0 (weight of the reconstruction term)")
    pretrain_epochs: int = Field(0, ge=0, description="an integer >= 0, below train.epochs (unimodal pre-training "
                                                      "epochs before MCR; 0: none)")
    finetune_lr_scale: float = LR_SCALE


class MCR(Staged, Joint):
    """MCR (see the module docstring); optional unimodal pre-training first (the paper starts its ResNet
    runs from pre-trained unimodal encoders). Logs jsd_m = J(m | through m), the prediction's dependence
    on modality m, and the contrastive / reconstruction terms."""

    name = "mcr"
    Params = MCRParams

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.trains_heads = self.unimodal_weight > 0 and self.pretrain_epochs == 0
        self.heads_trained = self.unimodal_weight > 0 or self.pretrain_epochs > 0
        self.decoder: nn.Module | None = None
        self.last: dict[str, torch.Tensor] = {}

    def setup(self, model: nn.Module, epochs: int) -> list[nn.Parameter]:
        self.pretrain = resolve_pretrain_epochs(self.name, self.pretrain_epochs, epochs) if self.pretrain_epochs else 0
        core = unwrap(model)
        dims = [core.encoders[m].out_dim for m in core.encoders]
        if self.contrastive and len(set(dims)) > 1:
            raise ConfigError(f"method.contrastive: mcr compares the modalities' latents, whose sizes differ ({dims}); "
                              "set method.contrastive: 0 or give both encoders one output size")
        if getattr(core.fusion, "inputs", "features") == "tokens":
            raise ConfigError("method.name: mcr permutes pooled latents; model.fusion.type transformer fuses tokens. "
                              "Use late, mid, gated, film or sum")
        if self.pretrain:
            self.notes = self.stage_notes(f"epochs {self.pretrain + 1}-{epochs}: MCR")
        if not self.ceb:
            return []
        device = next(core.parameters()).device
        self.decoder = make_decoder(core.num_classes, dims).to(device)
        return list(self.decoder.parameters())

    def state_dict(self) -> dict[str, Any]:
        return {f"decoder.{k}": v for k, v in self.decoder.state_dict().items()} if self.decoder is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.decoder is not None:
            self.decoder.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.startswith("decoder.")})

    def forward(self, model: nn.Module, audio: torch.Tensor | None, video: torch.Tensor | None) -> Outputs:
        outputs = model(audio, video, with_features=True)
        if self.in_pretraining() or audio is None or video is None or not model.training:
            return outputs
        fusion = unwrap(model).fusion
        inputs = outputs["features"] if fusion.inputs == "features" else {m: outputs[m] for m in outputs["features"]}
        index = batch_permutations(outputs["fused"].shape[0], self.permutations, outputs["fused"].device)
        outputs["mcr"] = perturbed_differences(fusion, inputs, outputs["fused"], index,
                                               collaborative=self.game == "collaborative")
        return outputs

    def loss(self, outputs: Outputs, labels: torch.Tensor) -> torch.Tensor:
        if self.in_pretraining():
            return unimodal_loss(outputs, labels)
        loss = F.cross_entropy(outputs["fused"], labels) + unimodal_loss(outputs, labels, self.unimodal_weight)
        if "mcr" not in outputs:
            return loss
        mods = list(outputs["features"])
        feats = [outputs["features"][m] for m in mods]
        terms = outputs["mcr"]
        loss = loss + self.mipd * game_loss(terms, mods, self.game)
        through = (lambda m: (m, None)) if self.game == "collaborative" else (lambda m: (m, m))
        self.last = {f"jsd_{m}": terms[through(m)].detach() for m in mods}
        if self.contrastive:
            con = supervised_contrastive(feats, labels, self.temperature)
            loss = loss + self.contrastive * con
            self.last["con"] = con.detach()
        if self.decoder is not None:
            ceb = ceb_reconstruction(self.decoder, outputs["fused"], feats)
            loss = loss + self.ceb * ceb
            self.last["ceb"] = ceb.detach()
        return loss

    def after_backward(self, model: nn.Module, outputs: Outputs, labels: torch.Tensor, epoch: int) -> dict[str, float]:
        if self.decoder is not None:  # outside the DDP module: its gradient is averaged over ranks here
            with torch.no_grad():
                for p in self.decoder.parameters():
                    if p.grad is not None:
                        p.grad.copy_(self.reduce(p.grad))
        last, self.last = self.last, {}
        if not last:
            return {}
        return dict(zip(last, torch.stack(list(last.values())).tolist()))
