"""The simple baselines (ensemble, unimodal pre-training) and MCR: golden values computed by hand with
plain Python floats, the gradient routing of MCR's game, and what each stage trains."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mmdeploy.balance import (batch_permutations, build_method, ceb_reconstruction, game_loss, js_divergence,
                              log_mean_probs, perturbed_differences, supervised_contrastive)
from mmdeploy.errors import ConfigError
from mmdeploy.models import build_model

TINY = {"audio": {"type": "resnet", "width": 4, "layers": [1, 1]},
        "video": {"type": "resnet", "width": 4, "layers": [1, 1]}, "fusion": {"type": "late"}}


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v - max(row)) for v in row]
    return [e / sum(exps) for e in exps]


def jsd(p: list[float], q: list[float]) -> float:
    m = [(a + b) / 2 for a, b in zip(p, q)]
    return 0.5 * sum(a * math.log(a / c) for a, c in zip(p, m)) + 0.5 * sum(b * math.log(b / c) for b, c in zip(q, m))


def test_ensemble_prediction_is_the_mean_of_unimodal_probabilities_by_hand():
    # p_a = [1/4, 3/4], p_v = [4/5, 1/5]: mean [0.525, 0.475]
    z = log_mean_probs([torch.tensor([[0.0, math.log(3.0)]]), torch.tensor([[math.log(4.0), 0.0]])])
    torch.testing.assert_close(z.softmax(-1), torch.tensor([[0.525, 0.475]]))
    torch.testing.assert_close(z.exp().sum(-1), torch.tensor([1.0]))  # already log-probabilities
    model = build_model(build_method("ensemble").arch(TINY), 3)
    assert model.arch["fusion"] == {"type": "prob-mean"} and not list(model.fusion.parameters())
    out = model(torch.randn(2, 1, 16, 16), torch.randn(2, 3, 2, 16, 16))
    torch.testing.assert_close(out["fused"].softmax(-1), (out["audio"].softmax(-1) + out["video"].softmax(-1)) / 2)
    assert "mean of the audio and video heads" in build_method("ensemble").notes["fused_head"]


def test_ensemble_loss_is_each_heads_own_cross_entropy():
    method = build_method("ensemble")
    labels = torch.tensor([0, 2])
    out = {"fused": torch.zeros(2, 3), "audio": torch.tensor([[2.0, 0, 0], [0, 1, 0]]), "video": torch.zeros(2, 3)}
    by_hand = (-math.log(softmax([2.0, 0, 0])[0]) - math.log(softmax([0, 1.0, 0])[2])) / 2 + math.log(3.0)
    assert method.loss(out, labels).item() == pytest.approx(by_hand, rel=1e-6)


def test_jensen_shannon_by_hand():
    p, q = [0.5, 0.5], [0.9, 0.1]
    got = js_divergence(torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(9.0), 0.0]]))
    assert got.item() == pytest.approx(jsd(p, q), rel=1e-6)
    assert js_divergence(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]])).item() == pytest.approx(0.0, abs=1e-7)
    assert jsd([1 - 1e-12, 1e-12], [1e-12, 1 - 1e-12]) == pytest.approx(math.log(2), rel=1e-6)  # the bound


def test_supervised_contrastive_by_hand():
    # z = e1, e2 (audio), e1, e2 (video), labels 0, 1: each anchor has one positive (s = 1/t) and two
    # negatives (s = 0): loss = -log(e^{1/t} / (e^{1/t} + 2)) for every anchor
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    for t in (1.0, 0.5):
        got = supervised_contrastive([f, f.clone()], torch.tensor([0, 1]), temperature=t)
        assert got.item() == pytest.approx(math.log(1 + 2 * math.exp(-1 / t)), rel=1e-6)
    # one label only: no negatives, every positive pair gives -log(1) = 0
    assert supervised_contrastive([f, f], torch.tensor([1, 1]), 0.1).item() == pytest.approx(0.0, abs=1e-6)


def test_ceb_reconstruction_by_hand():
    decoder = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False), torch.nn.ReLU(), torch.nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        decoder[0].weight.copy_(torch.eye(2))
        decoder[2].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    fused = torch.tensor([[1.0, -2.0]], requires_grad=True)   # relu -> [1, 0] -> [1, 0, 1]
    f_a, f_v = torch.tensor([[0.0, 2.0]], requires_grad=True), torch.tensor([[4.0]], requires_grad=True)
    loss = ceb_reconstruction(decoder, fused, [f_a, f_v])
    assert loss.item() == pytest.approx(((1 - 0) ** 2 + (0 - 2) ** 2 + (1 - 4) ** 2) / 3)
    loss.backward()
    assert fused.grad is None and f_a.grad is not None  # the prediction is detached; the latents are pushed


def test_game_strategies_by_hand():
    j = {("audio", "audio"): 0.3, ("video", "audio"): 0.15, ("audio", "video"): 0.4, ("video", "video"): 0.2,
         ("audio", None): 0.5, ("video", None): 0.7}
    terms = {k: torch.tensor(v) for k, v in j.items()}
    mods = ["audio", "video"]
    # greedy: audio -J(a|a) + J(v|a), video -J(v|v) + J(a|v); independent: -J(a|a) - J(v|v)
    assert game_loss(terms, mods, "greedy").item() == pytest.approx(-0.3 + 0.15 - 0.2 + 0.4)
    assert game_loss(terms, mods, "independent").item() == pytest.approx(-0.3 - 0.2)
    assert game_loss(terms, mods, "collaborative").item() == pytest.approx(-0.5 - 0.7)


def test_perturbed_differences_values_and_gradient_routing():
    """J(n | m) by hand from per-sample softmaxes for a fixed permutation; the gradient of J(audio | audio)
    reaches the audio latent and W_audio only, J(audio | video) the video side only."""
    torch.manual_seed(0)
    model = build_model(TINY, 3)
    fusion = model.fusion
    with torch.no_grad():
        fusion.bias.copy_(torch.tensor([0.5, -0.5, 1.0]))
    feats = {m: torch.randn(3, fusion.weights[m].in_features, requires_grad=True) for m in ("audio", "video")}
    fused = fusion(feats).detach()                                # base without gradient: isolate the branches
    index = torch.tensor([2, 0, 1, 1, 2, 0])                      # two permutations of 3 rows
    terms = perturbed_differences(fusion, feats, fused, index)
    assert set(terms) == {(n, m) for n in feats for m in feats}
    w = {m: fusion.weights[m].weight.detach() for m in feats}
    b = fusion.bias.detach()
    rows = [0, 1, 2, 0, 1, 2]
    for n in feats:
        want = 0.0
        for r, i in zip(rows, index.tolist()):
            z = sum((w[m] @ (feats[m][i] if m == n else feats[m][r]).detach()) for m in feats) + b
            want += jsd(softmax(z.tolist()), softmax(fused[r].tolist()))
        for m in feats:  # the value does not depend on which branch carries gradient
            assert terms[(n, m)].item() == pytest.approx(want / 6, rel=1e-4)
    terms[("audio", "audio")].backward()
    assert feats["audio"].grad.abs().sum() > 0 and feats["video"].grad is None
    assert fusion.weights["audio"].weight.grad.abs().sum() > 0 and fusion.weights["video"].weight.grad is None
    fusion.zero_grad(set_to_none=True)
    feats["audio"].grad = None
    terms[("audio", "video")].backward()
    assert feats["audio"].grad is None and feats["video"].grad.abs().sum() > 0
    assert fusion.weights["audio"].weight.grad is None


def test_batch_permutations_are_permutations():
    index = batch_permutations(5, 3, generator=torch.Generator().manual_seed(0))
    assert index.shape == (15,) and all(sorted(index[i * 5:(i + 1) * 5].tolist()) == list(range(5)) for i in range(3))


def test_mcr_loss_is_its_terms_and_logs_permutation_importance():
    torch.manual_seed(0)
    method = build_method("mcr", permutations=2, ceb=0.5)
    model = build_model(TINY, 3)
    method.setup(model, 4)
    audio, video, labels = torch.randn(4, 1, 16, 16), torch.randn(4, 3, 2, 16, 16), torch.tensor([0, 1, 2, 1])
    torch.manual_seed(5)
    out = method.forward(model, audio, video)
    loss = method.loss(out, labels)
    feats = [out["features"]["audio"], out["features"]["video"]]
    want = (F.cross_entropy(out["fused"], labels) + 0.01 * (F.cross_entropy(out["audio"], labels)
            + F.cross_entropy(out["video"], labels)) + 0.1 * game_loss(out["mcr"], ["audio", "video"], "greedy")
            + supervised_contrastive(feats, labels, 0.1)
            + 0.5 * ceb_reconstruction(method.decoder, out["fused"], feats))
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    # greedy: J(n | m) has one value for every m, so the game's value is 0 and only its gradients act
    assert game_loss(out["mcr"], ["audio", "video"], "greedy").item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    logs = method.after_backward(model, out, labels, 0)
    assert set(logs) == {"jsd_audio", "jsd_video", "con", "ceb"}
    assert logs["jsd_audio"] == pytest.approx(out["mcr"][("audio", "audio")].item())
    assert all(p.grad is not None for p in method.decoder.parameters())


def test_mcr_refuses_what_it_cannot_compare():
    mixed = {**TINY, "video": {"type": "resnet", "width": 8, "layers": [1, 1]}}
    with pytest.raises(ConfigError, match=r"method\.contrastive"):
        build_method("mcr").setup(build_model(mixed, 3), 4)
    build_method("mcr", contrastive=0).setup(build_model(mixed, 3), 4)
    with pytest.raises(ConfigError, match=r"method\.game"):
        build_method("mcr", game="selfish")


def test_pretrain_stages_train_what_they_say():
    """Stage 1 (epoch 0): encoders and heads move, the fusion does not (nothing reaches it). At the boundary
    the optimizer's moments are cleared. Stage 2 frozen: only the fusion moves, BatchNorm statistics stay.
    Stage 2 finetune: everything reached by CE(fused) moves; the bundle may only come from stage 2."""
    torch.manual_seed(0)
    audio, video, labels = torch.randn(6, 1, 16, 16), torch.randn(6, 3, 2, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    from mmdeploy.train import train_step

    for name in ("pretrain-frozen", "pretrain-finetune"):
        torch.manual_seed(1)
        model = build_model(TINY, 3)
        method = build_method(name, pretrain_epochs=1)
        method.setup(model, 3)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        assert [method.stage(e) for e in range(3)] == [1, 2, 2] and [method.selectable(e) for e in range(3)] == \
            [False, True, True]
        moved = {}
        for epoch in (0, 1):
            method.begin_epoch(model, optimizer, epoch)
            if epoch == 1:
                assert not optimizer.state, "stage 2 starts with fresh optimizer moments"
            before = {n: t.detach().clone() for n, t in model.state_dict().items()}
            model.train()
            train_step(model, model, method, optimizer, audio, video, labels, epoch)
            moved[epoch] = {n for n, t in model.state_dict().items() if not torch.equal(before[n], t)}
        assert moved[0] and not any(n.startswith("fusion.") for n in moved[0])
        assert any(n.startswith("encoders.") for n in moved[0]) and any(n.startswith("heads.") for n in moved[0])
        if name == "pretrain-frozen":
            assert moved[1] and all(n.startswith("fusion.") for n in moved[1])   # incl. no BatchNorm statistics
        else:
            assert any(n.startswith("encoders.") for n in moved[1]) and any(n.startswith("fusion.") for n in moved[1])
            assert not any(n.startswith("heads.") for n in moved[1])              # joint: CE(fused) only


def test_pretrain_epochs_must_leave_a_second_stage():
    method = build_method("pretrain-finetune", pretrain_epochs=3)
    with pytest.raises(ConfigError, match=r"method\.pretrain_epochs"):
        method.setup(build_model(TINY, 3), 3)
    half = build_method("pretrain-frozen")
    half.setup(build_model(TINY, 3), 10)
    assert half.pretrain == 5 and half.notes["pretrain_epochs"] == 5
    with pytest.raises(ConfigError, match=r"method\.finetune_params"):
        build_method("pretrain-finetune", finetune_params={"alpha": 1.0})   # joint takes none
    assert build_method("pretrain-finetune", finetune="mlb", finetune_params={"alpha": 0.5}).inner.alpha == 0.5
    slow = build_method("pretrain-finetune", pretrain_epochs=1, finetune_lr_scale=0.1)
    slow.setup(build_model(TINY, 3), 3)
    assert [slow.lr_factor(e) for e in range(3)] == [1.0, 0.1, 0.1] and build_method("mlb").lr_factor(0) == 1.0
