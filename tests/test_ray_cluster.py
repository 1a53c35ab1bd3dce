"""The Ray engine of `mmdeploy batch` on a two-node Ray cluster on this machine (ray.cluster_utils.Cluster, both
nodes on 127.0.0.1, token authentication on): files spread over both nodes, an inference actor that dies is
restarted, a run under a tiny object-store cap completes, the CLI joins with --ray-token-file (a wrong token is
one line), and a worker node killed mid-run costs no file: the rerun finishes every file exactly once."""
from __future__ import annotations

import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from mmdeploy.batch import Job, read_results, run_batch
from mmdeploy.batch.ray_engine import Classifier

ray = pytest.importorskip("ray")
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]
REPO = Path(__file__).resolve().parents[1]
NODE_CPUS = 2  # each node: the head holds the driver's actor pool and decode tasks, the worker decode tasks
FILES = 8
TIMEOUT_S = 120.0  # per file: generous, a loaded 2-core machine starts decode processes slowly


def listening(pids: set[int]) -> list[str]:
    """host:port of every TCP socket in LISTEN state owned by `pids`."""
    import psutil

    return [f"{c.laddr.ip}:{c.laddr.port}" for c in psutil.net_connections("tcp")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def family() -> set[int]:
    import psutil

    return {os.getpid(), *(p.pid for p in psutil.Process().children(recursive=True))}


def loopback(address: str) -> bool:
    return address.rsplit(":", 1)[0] in ("127.0.0.1", "::ffff:127.0.0.1")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Head + one worker node on 127.0.0.1 with token authentication; yields (cluster, worker node, token file).
    A Ray instance this session had (tests/conftest.py's ray_local) is shut down first and started again after."""
    from ray.cluster_utils import Cluster

    from mmdeploy.raycluster import connect, local_only, reread_auth, use_token

    had_ray = ray.is_initialized()
    ray.shutdown()
    temp = tempfile.mkdtemp(prefix="rayc", dir="/tmp")  # short: Ray's socket paths must stay under 107 bytes
    os.makedirs(f"{temp}/ray")
    token = Path(temp) / "token"
    token.write_text("mmdeploy-test-token-" + os.urandom(8).hex())
    env = pytest.MonkeyPatch()
    env.setenv("RAY_TMPDIR", temp)  # the cluster's address file goes here, not into the machine's /tmp/ray
    env.setenv("RAY_AUTH_MODE", "token")
    env.setenv("RAY_AUTH_TOKEN_PATH", str(token))
    env.delenv("RAY_AUTH_TOKEN", raising=False)
    use_token(token)
    reread_auth()  # this process's Ray reads its settings again: the nodes it starts and it use the token
    local_only()  # Ray keeps 127.0.0.1 as the nodes' address (mmdeploy/raycluster.py)
    nodes = None
    for attempt in range(3):  # a loaded machine can miss Ray's fixed raylet start-up wait
        try:
            nodes = Cluster(initialize_head=True, head_node_args={
                "node_ip_address": "127.0.0.1", "num_cpus": NODE_CPUS, "include_dashboard": False,
                "temp_dir": f"{temp}/ray"})
            worker = nodes.add_node(num_cpus=NODE_CPUS, node_ip_address="127.0.0.1")
            break
        except Exception:  # noqa: BLE001 - retried, then the error stands
            if nodes is not None:
                nodes.shutdown()
            nodes = None
            if attempt == 2:
                raise
    try:
        connect(nodes.address, token_file=token)
        yield nodes, worker, token
    finally:
        ray.shutdown()
        nodes.shutdown()
        env.undo()
        shutil.rmtree(temp, ignore_errors=True)
        if had_ray:
            again = tempfile.mkdtemp(prefix="ray", dir="/tmp")
            connect(cpus=2, temp_dir=again, attempts=3)


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    """FILES two-second synthetic clips (copies of 4)."""
    from mmdeploy.data.synth import generate

    root = tmp_path_factory.mktemp("two_nodes")
    generate(root / "synth", clips=4, seed=3, classes=2, workers=1)
    out = root / "archive"
    out.mkdir()
    for i, clip in enumerate(sorted((root / "synth" / "clips").glob("*.mp4")) * (FILES // 4)):
        shutil.copy(clip, out / f"{i:03d}_{clip.name}")
    return out


def node_noting_job(path, spec):
    """jobs.file_job that notes which node's raylet ran it (RAY_RAYLET_PID, inherited by the decode process)
    in NOTES/<file name>."""
    from mmdeploy.jobs import file_job

    notes = Path(path).parent.parent / "notes"
    notes.mkdir(exist_ok=True)
    (notes / Path(path).name).write_text(os.environ.get("RAY_RAYLET_PID", "?"))
    return file_job(path, spec)


def slow_noting_job(path, spec):
    """node_noting_job, 1 s slower (a run then lasts long enough to lose a node in it)."""
    time.sleep(1.0)
    return node_noting_job(path, spec)


class DiesOnce(Classifier):
    """The inference actor, but the first call of the run dies (the process exits, as an out-of-memory kill
    would): RUN/.actor-died marks that it did."""

    def __call__(self, batch):
        marker = Path(self._run) / ".actor-died"
        if not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return super().__call__(batch)

    def __init__(self, run, *args, **kwargs):
        super().__init__(run, *args, **kwargs)
        self._run = run


def once_each(out: Path, archive: Path) -> list[dict]:
    rows = read_results(out).to_pylist()
    assert collections.Counter(Path(r["path"]).name for r in rows) == \
        collections.Counter(p.name for p in archive.iterdir())
    return rows


def test_every_ray_process_listens_on_loopback_only(cluster):
    addresses = listening(family())
    assert addresses and all(loopback(a) for a in addresses), addresses
    assert all(n["NodeManagerAddress"] == "127.0.0.1" for n in ray.nodes())
    assert sum(n["Alive"] for n in ray.nodes()) == 2


def test_files_spread_over_both_nodes_an_actor_restart_and_a_tiny_object_store(cluster, archive, tiny_bundle,
                                                                                tmp_path):
    """One run: decode tasks on both nodes, the inference actor killed on its first batch (restarted, the batch
    retried), the object store capped at 1 MB (less than the run's features): every file once, none failed."""
    run = tmp_path / "run"
    shutil.copytree(tiny_bundle, run)
    out = tmp_path / "results"
    job = Job(model=run, backend="torch", timeout=TIMEOUT_S)
    summary = run_batch([str(archive)], out, job, engine="ray", quiet=True,
                        ray_options={"address": cluster[0].address, "decode_batch_files": 2,
                                     "decode_job": node_noting_job, "classifier": DiesOnce, "object_store_mb": 1})
    errors = {Path(r["path"]).name: r["error"] for r in read_results(out).to_pylist() if r["error"]}
    assert (summary.done, summary.failed) == (FILES, 0), errors
    assert (run / ".actor-died").exists()
    rows = once_each(out, archive)
    assert all(r["error"] is None for r in rows)
    raylets = {p.read_text() for p in (archive.parent / "notes").iterdir()}
    assert len(raylets) == 2, raylets  # both nodes decoded
    from ray.data import DataContext

    assert DataContext.get_current().execution_options.resource_limits.object_store_memory == 1 << 20


def test_the_cli_passes_its_token_file_and_a_wrong_token_is_one_line(cluster, archive, tiny_bundle, tmp_path):
    """`mmdeploy batch --address ADDR --ray-token-file FILE` (the driver above joined with the right one through the
    same `connect`): a wrong token and a missing file are each one `error:` line, exit 2, no traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["RAY_py_gcs_connect_timeout_s"] = "5"  # Ray waits 20 s for a cluster that refuses it
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-the-token")
    base = [sys.executable, "-m", "mmdeploy", "batch", str(archive), "--model", str(tiny_bundle), "--backend",
            "torch", "--engine", "ray", "--address", cluster[0].address, "--limit", "1", "--quiet",
            "--out", str(tmp_path / "r")]
    for token, words in [(wrong, "Authentication token is missing or incorrect"), (tmp_path / "none", "cannot read")]:
        done = subprocess.run([*base, "--ray-token-file", str(token)], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2 and done.stderr.count("\n") == 1 and done.stderr.startswith("error: --") and \
            words in done.stderr, done.stderr[-2000:]


def test_a_worker_node_killed_mid_run_costs_no_file(cluster, archive, tiny_bundle, tmp_path):
    """The worker node dies while its decode tasks run (SIGKILL to its processes): the run goes on with the head
    (retried tasks, then the files that did not come back one per task) and a rerun finishes every file exactly
    once, none of them failed."""
    nodes, worker, _ = cluster
    notes = archive.parent / "notes"
    shutil.rmtree(notes, ignore_errors=True)
    out = tmp_path / "results"
    job = Job(model=tiny_bundle, backend="torch", timeout=TIMEOUT_S)
    result: dict = {}

    def first_run():
        try:
            result["summary"] = run_batch([str(archive)], out, job, engine="ray", quiet=True,
                                          ray_options={"address": nodes.address, "decode_batch_files": 1,
                                                       "decode_job": slow_noting_job})
        except Exception as exc:  # noqa: BLE001 - reported below: the rerun must finish the job either way
            result["error"] = exc

    thread = threading.Thread(target=first_run)
    thread.start()
    raylet = str(worker.all_processes["raylet"][0].process.pid)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (notes.is_dir() and raylet in {p.read_text() for p in notes.iterdir()}):
        time.sleep(0.1)
    assert notes.is_dir() and raylet in {p.read_text() for p in notes.iterdir()}, "the worker node decoded nothing"
    nodes.remove_node(worker, allow_graceful=False)
    thread.join(300)
    assert not thread.is_alive()
    again = run_batch([str(archive)], out, job, engine="ray", quiet=True, ray_options={"address": nodes.address})
    rows = once_each(out, archive)
    assert all(r["error"] is None for r in rows), [(r["path"], r["error"]) for r in rows if r["error"]]
    first = result.get("summary")
    assert again.done + again.skipped == FILES and (first is None or first.done + again.done == FILES), (result, again)
