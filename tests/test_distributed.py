"""DDP on CPU (gloo, 2 processes): MLB steps on different data per rank keep the replicas identical,
because the scores are all-reduced before k is computed; without that reduce they drift apart. The
second test runs `train()` itself on 2 ranks (the all-reduce that train() installs is what it checks)."""
import hashlib
import json
import os
from pathlib import Path

import torch
import torch.multiprocessing as mp

from tests.servers import free_port

TINY = {"audio": {"type": "resnet", "width": 4, "layers": [1, 1, 1, 1]},
        "video": {"type": "resnet", "width": 4, "layers": [1, 1, 1, 1]},
        "fusion": {"type": "late"}}


def digest(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in module.named_parameters():  # BN running stats stay per-rank until broadcast
        h.update(name.encode() + tensor.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def worker(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from mmdeploy.balance import build_method
    from mmdeploy.models import build_model
    from mmdeploy.train import all_reduce_mean, train_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    result = {}
    for variant in ("reduced", "local"):
        torch.manual_seed(0)  # same init on both ranks (DDP also broadcasts rank 0's)
        model = build_model(TINY, 3)
        net = DistributedDataParallel(model)
        method = build_method("mlb", alpha=2.0)
        if variant == "reduced":
            method.reduce = all_reduce_mean
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.Generator().manual_seed(100 + rank)  # different batches per rank
        ks = []
        for _ in range(3):
            audio, video = torch.randn(4, 1, 16, 20, generator=data), torch.randn(4, 3, 2, 16, 16, generator=data)
            labels = torch.randint(0, 3, (4,), generator=data)
            _, _, logs = train_step(net, model, method, optimizer, audio, video, labels, epoch=0)
            ks.append([logs["k_audio"], logs["k_video"]])
        result[variant] = {"params": digest(model), "k": ks}
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_mlb_under_ddp_keeps_ranks_identical(tmp_path):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["reduced"]["k"] == r1["reduced"]["k"]
    assert r0["reduced"]["params"] == r1["reduced"]["params"]
    # the control: per-rank scores give per-rank k, and the replicas drift apart
    assert r0["local"]["k"] != r1["local"]["k"]
    assert r0["local"]["params"] != r1["local"]["params"]


# ---- end to end: train() itself under 2 gloo ranks ------------------------------------------------

DDP_RUNS = {  # method -> overrides; each needs statistics from every rank
    "mlb": ["method.alpha=2.0"],                                                   # the scores behind k
    "pretrain-finetune": ["method.pretrain_epochs=1", "method.finetune=mlb", "method.finetune_params={alpha: 2.0}"],
    "mcr": ["method.ceb=1.0", "method.permutations=2"],                            # its decoder lives outside DDP
}


def train_worker(rank: int, world: int, port: int, recipe: dict, out: str) -> None:
    """One torchrun-like rank: environment variables, then `train()` for every method in DDP_RUNS, recording
    after each optimizer step the logged coefficients, the local loss and a digest of every trained tensor."""
    os.environ.update(WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import torch.distributed as dist

    from mmdeploy import train as training

    real_step, steps = training.train_step, []

    def recording(net, model, method, optimizer, *args):
        outputs, loss, logs = real_step(net, model, method, optimizer, *args)
        decoder = getattr(method, "decoder", None)
        steps.append({"loss": loss, "k": {k: v for k, v in logs.items() if k.startswith("k_")},
                      "params": digest(model) + (digest(decoder) if decoder is not None else "")})
        return outputs, loss, logs

    training.train_step = recording
    result = {}
    for method, sets in DDP_RUNS.items():
        steps.clear()
        training.train(recipe, Path(out) / method, method=method, overrides=sets, quiet=True)
        result[method] = list(steps)
    Path(out, f"train-rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_train_under_ddp_keeps_coefficients_and_weights_equal_across_ranks(tmp_path):
    """`mmdeploy train` under 2 processes: each rank sees different batches (its losses differ), yet the
    coefficients and all weights after every step are identical on both ranks, for MLB, for MLB as the
    second stage of pretrain-finetune, and for MCR (whose decoder's gradient is averaged by the method).
    Without the all-reduce that train() installs under DDP (`method.reduce`), this fails."""
    from mmdeploy.data.synth import generate

    manifest = generate(tmp_path / "synth", clips=28, seed=0, classes=4, size=32, workers=1)
    recipe = {"data": {"manifest": str(manifest), "cache": str(tmp_path / "cache"),
                       "spec": {"preset": "synth", "frame_height": 32, "frame_width": 32, "n_mels": 32, "frames": 2}},
              "model": TINY, "method": {"name": "mlb"},
              "train": {"epochs": 2, "batch_size": 4, "seed": 0, "device": "cpu",
                        "optimizer": {"name": "adam", "lr": 1e-2}}}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    mp.spawn(train_worker, args=(2, free_port(), recipe, str(tmp_path / "runs")), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / "runs" / f"train-rank{r}.json").read_text()) for r in (0, 1))
    for method in DDP_RUNS:
        a, b = r0[method], r1[method]
        assert len(a) == len(b) >= 4, method
        assert any(x["loss"] != y["loss"] for x, y in zip(a, b)), f"{method}: the ranks saw the same batches"
        assert [x["k"] for x in a] == [y["k"] for y in b], f"{method}: coefficients differ across ranks"
        assert [x["params"] for x in a] == [y["params"] for y in b], f"{method}: weights drifted apart"
        if method != "mcr":
            assert any(x["k"] and x["k"]["k_audio"] != 1.0 for x in a), f"{method}: MLB never modulated"
    assert (tmp_path / "runs" / "mlb" / "model.json").is_file()
