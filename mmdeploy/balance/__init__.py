"""Balancing methods: MLB, its baselines, the simple baselines balancing must beat, and MCR; a registry.

    core.py      pure functions over scores, parameter groups, parameter checks (pydantic)
    basic.py     the method protocol; joint, multiloss, ensemble, mlb
    gradient.py  ogm, ogm-ge, agm, mslr, pmr (as run in the MLB paper's code)
    staged.py    pretrain-finetune, pretrain-frozen (unimodal pre-training, then fusion)
    mcr.py       mcr (Multimodal Competition Regularizer, NeurIPS 2025)

`build_method(name, **params)` is the one entry point; every method's parameters are checked by its own
pydantic model, and `METHODS` is what the tests iterate over.
"""
from __future__ import annotations

from typing import Any

from mmdeploy.balance.basic import (MLB, Ensemble, Joint, MultiLoss, log_mean_probs, mlb_coefficients, mlb_ratios,
                                    unimodal_loss)
from mmdeploy.balance.core import (EpochStats, GroupCache, check_params, others_mean, scale_grads, true_class_losses,
                                   true_class_probs, true_class_scores)
from mmdeploy.balance.gradient import AGM, MSLR, OGM, OGMGE, PMR, add_gradient_noise, agm_coefficients, ogm_coefficients
from mmdeploy.balance.mcr import (MCR, batch_permutations, ceb_reconstruction, game_loss, js_divergence,
                                  perturbed_differences, supervised_contrastive)
from mmdeploy.balance.staged import PretrainFinetune, PretrainFrozen
from mmdeploy.errors import ConfigError

METHODS: dict[str, type[Joint]] = {cls.name: cls for cls in (
    Joint, MultiLoss, Ensemble, MLB, OGM, OGMGE, AGM, MSLR, PMR, PretrainFinetune, PretrainFrozen, MCR)}


def build_method(name: str, **params: Any) -> Joint:
    """The balancing method `name` with its recipe parameters; unknown names/keys raise ConfigError."""
    if name not in METHODS:
        raise ConfigError(f"method.name: {name!r} unknown; choose one of {', '.join(METHODS)}")
    return METHODS[name](**params)


__all__ = ["METHODS", "build_method", "Joint", "MultiLoss", "Ensemble", "MLB", "OGM", "OGMGE", "AGM", "MSLR", "PMR",
           "PretrainFinetune", "PretrainFrozen", "MCR", "EpochStats", "GroupCache", "check_params", "others_mean",
           "scale_grads", "true_class_losses", "true_class_probs", "true_class_scores", "mlb_coefficients",
           "mlb_ratios", "ogm_coefficients", "agm_coefficients", "add_gradient_noise", "unimodal_loss",
           "log_mean_probs", "js_divergence", "batch_permutations", "perturbed_differences", "game_loss",
           "supervised_contrastive", "ceb_reconstruction"]
