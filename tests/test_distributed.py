"""DDP on CPU (gloo, 2 processes): MLB steps on different data per rank keep the replicas identical,
because the scores are all-reduced before k is computed; without that reduce they drift apart."""
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
