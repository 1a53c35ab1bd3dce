"""Balancing: golden coefficients by hand, parameter groups each method touches, config errors; one test
parametrized over the registry (adding a method adds its test). MCR, ensemble and the staged baselines:
tests/test_balance_baselines.py."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from mmdeploy.balance import (METHODS, agm_coefficients, build_method, mlb_coefficients, mlb_ratios,
                              ogm_coefficients, scale_grads, true_class_scores)
from mmdeploy.errors import ConfigError
from mmdeploy.models import build_model

TINY = {"audio": {"type": "resnet", "width": 4, "layers": [1, 1]},
        "video": {"type": "resnet", "width": 4, "layers": [1, 1]}, "fusion": {"type": "late"}}


def test_true_class_scores_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]],      # head 0: p = [1/4, 3/4], [1/2, 1/2]
                           [[math.log(4.0), 0.0], [0.0, 0.0]]])     # head 1: p = [4/5, 1/5], [1/2, 1/2]
    labels = torch.tensor([1, 0])
    torch.testing.assert_close(true_class_scores(logits, labels), torch.tensor([(0.75 + 0.5) / 2, (0.2 + 0.5) / 2]))


def test_mlb_golden_two_modalities():
    r = mlb_ratios(torch.tensor([0.8, 0.4]))
    torch.testing.assert_close(r, torch.tensor([0.5, 2.0]))
    k = mlb_coefficients(r, alpha=0.8)
    # k_a = 1 + tanh(0.8 * (0.5 - 1)) = 1 - tanh(0.4); k_v = 1 + tanh(0.8 * (2 - 1)) = 1 + tanh(0.8)
    torch.testing.assert_close(k, torch.tensor([1 - 0.379949, 1 + 0.664037]), atol=1e-6, rtol=0)
    # beta variant: only the lagging modality (r > 1) changes: 1 + (10 - 1) tanh(0.8)
    kb = mlb_coefficients(r, alpha=0.8, beta=10.0)
    torch.testing.assert_close(kb, torch.tensor([1 - 0.379949, 1 + 9 * 0.664037]), atol=1e-5, rtol=0)


def test_mlb_three_modalities_and_equal_scores():
    r = mlb_ratios(torch.tensor([0.6, 0.3, 0.3]))
    torch.testing.assert_close(r, torch.tensor([0.5, 1.5, 1.5]))   # (0.3+0.3)/2/0.6, (0.6+0.3)/2/0.3
    k = mlb_coefficients(r, alpha=1.0)
    torch.testing.assert_close(k, torch.tensor([1 - math.tanh(0.5), 1 + math.tanh(0.5), 1 + math.tanh(0.5)]))
    assert mlb_coefficients(mlb_ratios(torch.tensor([0.3, 0.3, 0.3])), alpha=5.0).tolist() == [1.0, 1.0, 1.0]


def test_ogm_and_agm_coefficients_by_hand():
    # rho_a = 0.8 / 0.4 = 2 > 1: audio leads and gets 1 - tanh(0.8 * 2); video untouched
    torch.testing.assert_close(ogm_coefficients(torch.tensor([0.8, 0.4]), 0.8), torch.tensor([1 - math.tanh(1.6), 1.0]))
    # r_a = exp(L_v - L_a) = exp(0.5), r_v = exp(-0.5); running means equal -> r* = 1; k = exp(alpha (r* - r))
    k = agm_coefficients(torch.tensor([0.5, 1.0]), torch.tensor([0.2, 0.2]), alpha=0.8, clip=10.0)
    torch.testing.assert_close(k, torch.tensor([math.exp(0.8 * (1 - math.exp(0.5))), math.exp(0.8 * (1 - math.exp(-0.5)))]))
    capped = agm_coefficients(torch.tensor([5.0, 0.0]), torch.tensor([0.0, 5.0]), alpha=1.0, clip=10.0)
    assert capped[0].item() == pytest.approx(math.exp(10.0))


def test_scale_grads_per_group():
    a, b = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    a.grad, b.grad = torch.full((3,), 2.0), torch.full((2,), 3.0)
    scale_grads([[a], [b]], torch.tensor([0.5, 2.0]))
    assert a.grad.tolist() == [1.0] * 3 and b.grad.tolist() == [6.0] * 2


def grads_after(method_name: str, model, epoch: int = 0, **params):
    method = build_method(method_name, **params)
    torch.manual_seed(3)
    audio, video = torch.randn(4, 1, 16, 16), torch.randn(4, 3, 2, 16, 16)
    labels = torch.tensor([0, 1, 2, 1])
    model.zero_grad(set_to_none=True)
    outputs = method.forward(model, audio, video)
    method.loss(outputs, labels).backward()
    logs = method.after_backward(model, outputs, labels, epoch)
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}, logs, method


@pytest.fixture()
def model():
    torch.manual_seed(0)
    return build_model(TINY, 3)


def group_names(model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {g: [names[id(p)] for p in ps] for g, ps in model.param_groups().items()}


def test_joint_gives_heads_no_gradient_and_multiloss_reaches_all(model):
    joint, logs, _ = grads_after("joint", model)
    assert logs == {}
    assert all(joint[n] is None for n in joint if n.startswith("heads."))
    assert all(joint[n] is not None for n in joint if not n.startswith("heads."))
    multi, _, _ = grads_after("multiloss", model)
    assert all(g is not None for g in multi.values())
    # what a DDP trainer needs for find_unused_parameters: checked for every method in the registry test
    assert not build_method("joint").trains_heads and build_method("multiloss").trains_heads


def test_mlb_grads_are_multiloss_grads_times_k_per_group(model):
    multi, _, _ = grads_after("multiloss", copy.deepcopy(model))
    mlb, logs, _ = grads_after("mlb", model, alpha=0.8)
    assert set(logs) == {f"{x}_{m}" for x in "srk" for m in ("audio", "video")}
    s = torch.tensor([logs["s_audio"], logs["s_video"]])
    k = mlb_coefficients(mlb_ratios(s), 0.8)
    assert [logs["k_audio"], logs["k_video"]] == pytest.approx(k.tolist())
    assert abs(logs["k_audio"] - 1) > 1e-4, "the test batch should be unbalanced"
    groups = group_names(model)
    for g, factor in (("audio", k[0].item()), ("video", k[1].item()), ("shared", 1.0)):
        assert groups[g]
        for n in groups[g]:
            torch.testing.assert_close(mlb[n], multi[n] * factor, rtol=1e-5, atol=1e-7)
    assert groups["shared"] == ["fusion.bias"] and torch.equal(mlb["fusion.bias"], multi["fusion.bias"])


def test_mlb_equal_scores_and_inactive_epochs_leave_grads_untouched(model):
    method = build_method("mlb", alpha=3.0, start_epoch=2, end_epoch=4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    logits = torch.randn(4, 3)
    same = {"fused": logits, "audio": logits, "video": logits.clone()}
    logs = method.after_backward(model, same, torch.tensor([0, 1, 2, 0]), epoch=3)
    assert logs["k_audio"] == logs["k_video"] == 1.0
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())
    unequal = {"fused": logits, "audio": logits * 5, "video": logits}
    logs = method.after_backward(model, unequal, torch.tensor([0, 1, 2, 0]), epoch=5)
    assert logs["k_audio"] == logs["k_video"] == 1.0 and logs["r_audio"] != 1.0
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in model.parameters())


def test_reduce_hook_sees_scores_before_coefficients(model):
    method = build_method("mlb", alpha=0.8)
    seen = []
    method.reduce = lambda t: (seen.append(t.clone()), torch.tensor([0.8, 0.4]))[1]  # as if other ranks disagree
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    logits = torch.randn(4, 3)
    logs = method.after_backward(model, {"fused": logits, "audio": logits, "video": logits},
                                 torch.tensor([0, 1, 2, 0]), epoch=0)
    assert len(seen) == 1 and seen[0].shape == (2,)
    assert logs["k_audio"] == pytest.approx(1 - 0.379949, abs=1e-6)
    assert torch.allclose(model.heads["video"].weight.grad, torch.tensor(1 + 0.664037), atol=1e-6)


def test_ogm_scales_only_encoders_and_ge_adds_noise(model):
    joint, _, _ = grads_after("joint", copy.deepcopy(model))
    ogm, logs, _ = grads_after("ogm", copy.deepcopy(model), alpha=0.8)
    k = {"audio": logs["k_audio"], "video": logs["k_video"]}
    assert sorted(k.values())[1] == 1.0 and min(k.values()) < 1.0  # only the leading modality is slowed
    for n, g in joint.items():
        factor = next((k[m] for m in k if n.startswith(f"encoders.{m}.")), 1.0)
        if g is None:
            assert ogm[n] is None
        else:
            torch.testing.assert_close(ogm[n], g * factor, rtol=1e-5, atol=1e-7)
    ge, _, _ = grads_after("ogm-ge", model, alpha=0.8)
    assert not torch.allclose(ge["encoders.audio.net.stem.0.weight"], ogm["encoders.audio.net.stem.0.weight"])
    torch.testing.assert_close(ge["fusion.weights.audio.weight"], ogm["fusion.weights.audio.weight"])


def test_ogm_refuses_fusions_without_partial_logits():
    mid = build_model({**TINY, "fusion": {"type": "mid", "hidden": 8}}, 3)
    with pytest.raises(ConfigError, match="late"):
        grads_after("ogm-ge", mid)


def test_agm_decomposes_logits_under_no_grad_and_scales_groups(model):
    joint, _, _ = grads_after("joint", copy.deepcopy(model))
    agm, logs, method = grads_after("agm", model, alpha=0.8, grad_clip=1e9)
    assert model.training, "the zeroed-input passes must restore train mode"
    assert method.steps == 1 and method.running.tolist() == pytest.approx([logs["s_audio"], logs["s_video"]])
    k = {"audio": logs["k_audio"], "video": logs["k_video"]}
    assert abs(k["audio"] - k["video"]) > 1e-4, "the test batch should be unbalanced"
    for g, names in group_names(model).items():
        for n in names:
            if joint[n] is None:  # the heads: CE(fused) does not reach them
                assert agm[n] is None and n.startswith("heads.")
            else:
                torch.testing.assert_close(agm[n], joint[n] * k.get(g, 1.0), rtol=1e-5, atol=1e-7)


def test_agm_outputs_sum_to_fused(model):
    method = build_method("agm")
    out = method.forward(model, torch.randn(2, 1, 16, 16), torch.randn(2, 3, 2, 16, 16))
    assert not out["agm"]["audio"].requires_grad
    torch.testing.assert_close(out["agm"]["audio"] + out["agm"]["video"], out["fused"].detach())


@pytest.mark.parametrize("name, params, key", [
    ("mbl", {}, "method.name"),
    ("mlb", {"alpah": 0.8}, "method.alpah"),
    ("mlb", {"alpha": -1}, "method.alpha"),
    ("mlb", {"alpha": "high"}, "method.alpha"),
    ("mlb", {"variant": "beta"}, "method.beta"),
    ("mlb", {"beta": 10, "variant": "tanh"}, "method.beta"),
    ("mlb", {"beta": 0.5}, "method.beta"),
    ("mlb", {"variant": "2"}, "method.variant"),
    ("mlb", {"start_epoch": 3, "end_epoch": 2}, "method.end_epoch"),
    ("joint", {"alpha": 0.8}, "method.alpha"),
    ("agm", {"clip": 0}, "method.clip"),
    ("mslr", {"lr_scale": {"audio": 0.9}}, "method.lr_scale"),
    ("mslr", {"memory": 0}, "method.memory"),
    ("pmr", {"momentum": 1.0}, "method.momentum"),
])
def test_bad_method_config_names_the_key(name, params, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_method(name, **params)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_registered_method_validates_steps_and_resumes(name):
    """Every entry of the registry: defaults are valid, an unknown key and a word where a number belongs
    name the key, integers and "1e-4" (a YAML 1.1 reader's string) pass where floats are meant; three optimizer steps over a stage boundary (epochs
    0, 1 of 2) give a finite loss, finite gradients, float logs and moving weights; the method's running
    state round-trips through state_dict (as --resume stores it)."""
    with pytest.raises(ConfigError, match=r"method\.bogus: not a parameter of"):
        build_method(name, bogus=1)
    for key, field in METHODS[name].Params.model_fields.items():
        if field.annotation in (float, float | None):
            with pytest.raises(ConfigError, match=rf"method\.{key}: {name} needs"):
                build_method(name, **{key: "high"})
            if not field.metadata or all(getattr(c, "gt", None) in (None, 0) and getattr(c, "ge", None) in (None, 0)
                                         and getattr(c, "lt", 1) >= 1e-4 for c in field.metadata):
                assert getattr(build_method(name, **{key: "1e-4"}), key) == 1e-4    # YAML 1.1 leaves it a string
            if isinstance(field.default, float) and field.default.is_integer():  # e.g. 10.0 written as 10
                value = build_method(name, **{key: int(field.default)})
                assert getattr(value, key) == field.default and isinstance(getattr(value, key), float)
    method = build_method(name)
    torch.manual_seed(0)
    model = build_model(method.arch(TINY), 3)
    extra = method.setup(model, 2)
    optimizer = torch.optim.Adam([*model.parameters(), *extra], lr=1e-2)
    torch.manual_seed(1)
    audio, video, labels = torch.randn(6, 1, 16, 16), torch.randn(6, 3, 2, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    from mmdeploy.train import train_step

    heads_ever = False
    for epoch in (0, 1, 1):
        method.begin_epoch(model, optimizer, epoch)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        model.train()
        outputs, loss, logs = train_step(model, model, method, optimizer, audio, video, labels, epoch)
        assert math.isfinite(loss), (name, epoch)
        assert all(isinstance(v, float) and math.isfinite(v) for v in logs.values()), logs
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        assert any(not torch.equal(before[n], p) for n, p in model.named_parameters()), f"{name}: nothing moved"
        assert outputs["fused"].shape == (6, 3)
        heads_reached = all(p.grad is not None for p in model.heads.parameters())
        if method.trains_heads:    # DDP runs with find_unused_parameters=False: every step must reach them
            assert heads_reached, f"{name}: trains_heads but the heads got no gradient at epoch {epoch}"
        heads_ever = heads_ever or heads_reached
    assert heads_ever == method.heads_trained, f"{name}: heads_trained says {method.heads_trained}"
    state = method.state_dict()
    restored = build_method(name)
    restored.setup(copy.deepcopy(model), 2)
    restored.load_state_dict({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    again = restored.state_dict()
    assert again.keys() == state.keys()
    assert all(torch.equal(v, again[k]) if torch.is_tensor(v) else v == again[k] for k, v in state.items())


def test_beta_alone_selects_the_beta_variant():
    assert build_method("mlb", alpha=0.5, beta=10).beta == 10.0
    assert build_method("mlb", alpha=0.5, beta=None).beta is None


def test_agm_clips_total_norm_only_when_a_fusion_grad_spikes(model):
    method = build_method("agm", alpha=0.8, grad_clip=0.5)
    logits = torch.randn(4, 3)
    outputs = {"fused": logits, "audio": None, "video": None, "agm": {"audio": logits, "video": logits * 2}}
    labels = torch.tensor([0, 1, 2, 0])
    for scale, spikes in ((5.0, True), (1e-3, False)):
        for p in model.parameters():
            p.grad = torch.full_like(p, scale)
        method.after_backward(model, outputs, labels, epoch=0)
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
        assert (norm.item() == pytest.approx(0.5, rel=1e-4)) == spikes


def test_mlb_skips_a_batch_without_both_heads(model):
    logits = torch.randn(2, 3)
    assert build_method("mlb").after_backward(model, {"fused": logits, "audio": logits, "video": None},
                                              torch.tensor([0, 1]), epoch=0) == {}


def test_mslr_rho_from_epoch_accuracies_of_the_partial_logits(model):
    method = build_method("mslr", memory=2)
    labels = torch.tensor([0, 1])
    right, half = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    epochs = [(right, half), (half, half), (half, right), (half, half)]  # (audio, video) accuracy 1 or 0.5
    for epoch, (a, v) in enumerate(epochs):
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        logs = method.after_backward(model, {"partial": {"audio": a, "video": v}}, labels, epoch)
    # at epoch 3: rho_a = 0.5 / mean(1, 0.5), rho_v = 1 / mean(0.5, 0.5); k = rho * lr_scale (0.9, 1.1)
    assert [logs["rho_audio"], logs["rho_video"]] == pytest.approx([2 / 3, 2.0])
    assert [logs["k_audio"], logs["k_video"]] == pytest.approx([0.6, 2.2])
    assert torch.allclose(model.encoders["video"].net.stem[0].weight.grad, torch.tensor(2.2))
    assert torch.equal(model.heads["video"].weight.grad, torch.ones_like(model.heads["video"].weight))
    assert torch.equal(model.fusion.weights["audio"].weight.grad, torch.ones_like(model.fusion.weights["audio"].weight))


def test_pmr_prototypes_from_last_epoch_and_loss_on_the_lagging_modality(model):
    method = build_method("pmr", alpha=2.0)
    torch.manual_seed(5)
    audio, video, labels = torch.randn(6, 1, 16, 16), torch.randn(6, 3, 2, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    seen = []
    for epoch in (0, 1, 1):
        model.zero_grad(set_to_none=True)
        out = method.forward(model, audio, video)
        loss = method.loss(out, labels)
        extra = loss - torch.nn.functional.cross_entropy(out["fused"], labels)
        loss.backward()
        logs = method.after_backward(model, out, labels, epoch)
        seen.append((out, extra, logs))
    (first, extra0, logs0), (_, extra1, _), (last, extra2, logs2) = seen
    assert extra0 == 0 and extra1 == 0 and logs0 == {}  # no prototypes until epoch 0 is closed
    feats = first["features"]["audio"].detach()
    torch.testing.assert_close(method.prototypes["audio"], torch.stack([feats[labels == c].mean(0) for c in range(3)]))
    weights = [logs2["w_audio"], logs2["w_video"]]
    assert sorted(weights) == [0.0, 2.0]
    lagging = ("audio", "video")[weights.index(2.0)]
    q = -torch.cdist(last["features"][lagging].detach(), method.prototypes[lagging])
    assert extra2.item() == pytest.approx(2.0 * torch.nn.functional.cross_entropy(q, labels).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["agm", "mslr", "pmr"])
def test_running_state_round_trips_for_an_exact_resume(model, name):
    """A method restored from state_dict() (as --resume does, tensors and plain values apart) makes the
    same next step as the one that kept running: same logged coefficients, same gradients."""
    torch.manual_seed(7)
    batches = [(torch.randn(4, 1, 16, 16), torch.randn(4, 3, 2, 16, 16), torch.tensor([0, 1, 2, 1])) for _ in range(4)]
    method = build_method(name, **({"memory": 1} if name == "mslr" else {}))

    def step(m, batch, epoch):
        audio, video, labels = batch
        model.zero_grad(set_to_none=True)
        outputs = m.forward(model, audio, video)
        m.loss(outputs, labels).backward()
        logs = m.after_backward(model, outputs, labels, epoch)
        return logs, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    for epoch, batch in zip((0, 0, 1), batches):  # an epoch boundary, so epoch statistics exist
        step(method, batch, epoch)
    state = method.state_dict()
    restored = build_method(name, **({"memory": 1} if name == "mslr" else {}))
    restored.load_state_dict({k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()})
    weights = copy.deepcopy(model.state_dict())  # the step updates BatchNorm statistics: replay from here
    logs_a, grads_a = step(method, batches[3], 2)
    model.load_state_dict(weights)
    logs_b, grads_b = step(restored, batches[3], 2)
    assert logs_a == pytest.approx(logs_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.allclose(grads_a[k], grads_b[k]) for k in grads_a)


# ---- golden values from an independent per-sample computation (plain Python floats, no code under test) ----

def p_true(row: list[float], y: int) -> float:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    return exps[y] / sum(exps)


def batch_score(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """s = (1/B) sum_i softmax(z_i)[y_i], one sample at a time."""
    rows, ys = logits.tolist(), labels.tolist()
    return sum(p_true(r, y) for r, y in zip(rows, ys)) / len(ys)


def owner(name: str) -> str:
    """Which modality's group a parameter belongs to, by the model's naming (encoder, head, fusion slice)."""
    for m in ("audio", "video"):
        if name.startswith((f"encoders.{m}.", f"heads.{m}.", f"fusion.weights.{m}.")):
            return m
    return "shared"


def unbalanced_outputs(labels: torch.Tensor, leading: str = "audio") -> dict:
    """Hand-made logits: the leading head is confident on the true class, the other is not."""
    torch.manual_seed(11)
    strong = 3.0 * torch.nn.functional.one_hot(labels, 3).float() + 0.3 * torch.randn(len(labels), 3)
    weak = 0.4 * torch.nn.functional.one_hot(labels, 3).float() + 0.3 * torch.randn(len(labels), 3)
    lagging = "video" if leading == "audio" else "audio"
    return {"fused": strong + weak, leading: strong, lagging: weak}


@pytest.mark.parametrize("leading", ["audio", "video"])
def test_mlb_slows_the_leading_modality_golden_per_sample(model, leading):
    """k from per-sample softmax probabilities: the leading head's group gets k < 1, the lagging one k > 1.
    Catches scores stacked in the wrong modality order (which speeds up the leader instead)."""
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    outputs = unbalanced_outputs(labels, leading)
    s = {m: batch_score(outputs[m], labels) for m in ("audio", "video")}
    r = {"audio": s["video"] / s["audio"], "video": s["audio"] / s["video"]}
    k = {m: 1 + math.tanh(0.8 * (r[m] - 1)) for m in r}
    assert k[leading] < 1 < k["video" if leading == "audio" else "audio"]
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    logs = build_method("mlb", alpha=0.8).after_backward(model, outputs, labels, epoch=0)
    assert logs["s_audio"] == pytest.approx(s["audio"], rel=1e-5) and logs["k_video"] == pytest.approx(k["video"], rel=1e-5)
    for name, p in model.named_parameters():
        want = k.get(owner(name), 1.0)
        torch.testing.assert_close(p.grad, torch.full_like(p, want), rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("epoch, active", [(1, False), (2, True), (3, True), (4, True), (5, False)])
def test_epoch_window_includes_start_and_end_epoch(model, epoch, active):
    """start_epoch <= epoch <= end_epoch, both ends inclusive (the reference's 0...1500)."""
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    outputs = unbalanced_outputs(labels)
    s_a, s_v = batch_score(outputs["audio"], labels), batch_score(outputs["video"], labels)
    k_audio = 1 + math.tanh(0.8 * (s_v / s_a - 1)) if active else 1.0
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    build_method("mlb", alpha=0.8, start_epoch=2, end_epoch=4).after_backward(model, outputs, labels, epoch)
    assert model.encoders["audio"].net.stem[0].weight.grad.flatten()[0].item() == pytest.approx(k_audio, rel=1e-5)
    ogm = build_method("ogm", alpha=0.8, start_epoch=2, end_epoch=4)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    ogm.after_backward(model, {"partial": {"audio": outputs["audio"], "video": outputs["video"]}}, labels, epoch)
    k_ogm = 1 - math.tanh(0.8 * s_a / s_v) if active else 1.0
    assert model.encoders["audio"].net.stem[0].weight.grad.flatten()[0].item() == pytest.approx(k_ogm, rel=1e-5)


def test_ogm_partial_logits_carry_half_the_fusion_bias_golden(model):
    """z_m = W_m f_m + b/2, computed sample by sample with a non-zero bias (it starts at zero, which
    would hide a full-bias error); the logged scores come from those partial logits."""
    with torch.no_grad():
        model.fusion.bias.copy_(torch.tensor([2.0, -1.5, 0.5]))
    method = build_method("ogm", alpha=0.8)
    torch.manual_seed(3)
    audio, video, labels = torch.randn(4, 1, 16, 16), torch.randn(4, 3, 2, 16, 16), torch.tensor([0, 1, 2, 1])
    outputs = method.forward(model, audio, video)
    bias = model.fusion.bias.tolist()
    golden = {}
    for m in ("audio", "video"):
        w = model.fusion.weights[m].weight.tolist()
        feats = outputs["features"][m].tolist()
        golden[m] = [[sum(wc[j] * f[j] for j in range(len(f))) + bias[c] / 2 for c, wc in enumerate(w)] for f in feats]
        torch.testing.assert_close(outputs["partial"][m], torch.tensor(golden[m]), rtol=1e-4, atol=1e-5)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    logs = method.after_backward(model, outputs, labels, epoch=0)
    s = {m: sum(p_true(row, y) for row, y in zip(golden[m], labels.tolist())) / 4 for m in golden}
    assert [logs["s_audio"], logs["s_video"]] == pytest.approx([s["audio"], s["video"]], rel=1e-4)


def test_ogm_ge_is_k_times_grad_plus_noise_with_the_unscaled_std(model):
    """OGM-GE: grad <- k grad + N(0, std(grad) + 1e-8), std of the gradient before scaling. Over all
    encoder gradients: regressing the new grad on the old gives k, and the residual divided by each
    tensor's own (unscaled) std has unit spread. k from per-sample scores; heads/fusion untouched."""
    labels = torch.tensor([0, 1, 2, 1, 0, 2])
    outputs = unbalanced_outputs(labels, "audio")
    s_a, s_v = batch_score(outputs["audio"], labels), batch_score(outputs["video"], labels)
    k = {"audio": 1 - math.tanh(0.8 * s_a / s_v), "video": 1.0}    # rho_a = s_a / s_v > 1: audio leads
    assert k["audio"] < 0.5
    torch.manual_seed(0)
    before = {}
    for i, (name, p) in enumerate(model.named_parameters()):
        p.grad = torch.randn_like(p) * (1 + i % 5)
        before[name] = p.grad.clone()
    build_method("ogm-ge", alpha=0.8).after_backward(
        model, {"partial": {"audio": outputs["audio"], "video": outputs["video"]}}, labels, epoch=0)
    for m in ("audio", "video"):
        old, new, z = [], [], []
        for name, p in model.encoders[m].named_parameters():
            g0 = before[f"encoders.{m}.{name}"]
            if g0.numel() < 2:
                continue
            old.append(g0.flatten())
            new.append(p.grad.flatten())
            z.append(((p.grad - k[m] * g0) / g0.std()).flatten())
        old, new, z = torch.cat(old), torch.cat(new), torch.cat(z)
        slope = (old * new).sum() / (old * old).sum()
        assert slope.item() == pytest.approx(k[m], abs=0.08), f"{m}: grads not scaled by k"
        assert 0.9 < z.std().item() < 1.1, f"{m}: noise std is not the unscaled gradient's std"
        assert abs(z.mean().item()) < 0.1
    for name, p in model.named_parameters():
        if not name.startswith("encoders."):
            assert torch.equal(p.grad, before[name]), name
