"""What users get, not what the checkout has: the wheel and the built Bento, each in a fresh virtual environment
outside the repository, installed from the lock's pins with uv (the same uv the Makefile bootstraps).

- wheel: build it, install it with extra [cpu], then from an empty folder train a few steps of the shipped
  recipe by name -> export --onnx -> classify a clip -> serve and answer one request.
- Bento: `bentoml build` from the repository root (pyproject's [tool.bentoml.build]) with a model in a fresh
  store, `bentoml export` it to one file and import that into an empty BentoML home, then serve it from a
  venv that holds only the Bento's own locked requirements, and classify a real clip over HTTP.
Slow (two environments, a training run, two servers), so marked slow; still part of `make test`.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.servers import free_port, stop_server, wait_ready

pytestmark = pytest.mark.slow
httpx = pytest.importorskip("httpx")
REPO = Path(__file__).resolve().parents[1]
CLIP = "cremad_1001_DFA_ANG_XX.flv"


def uv() -> str:
    found = shutil.which("uv") or (str(REPO / ".uv/bin/uv") if (REPO / ".uv/bin/uv").is_file() else None)
    if found is None:
        pytest.fail("uv not found: `make install` bootstraps it into .uv/ (or `pip install uv`)")
    return found


VENV_BIN = Path(sys.executable).parent  # the environment `make install` made (.venv/bin)


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    """What a user's shell has after `make install` and `source .venv/bin/activate`: the system's PATH and
    .venv/bin, nothing else (not the uv that the Makefile bootstraps into .uv/, nor the caller's PATH), minus
    anything that would let the checkout leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "MMDEPLOY_MODEL")}
    env["PATH"] = os.pathsep.join([str(VENV_BIN), "/usr/bin", "/bin"])
    return {**env, "BENTOML_HOME": str(tmp / "bentoml"), "BENTOML_DO_NOT_TRACK": "True", "OMP_NUM_THREADS": "1",
            **extra}


def sh(args: list, cwd: Path, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    r = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, args))} -> {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    return r


def fresh_venv(path: Path, env: dict, requirements: list[str]) -> Path:
    """A new venv at `path` with `requirements` (uv pip install args), pinned to the lock's versions."""
    constraints = path.parent / f"{path.name}-constraints.txt"
    sh([uv(), "export", "--frozen", "--quiet", "--no-hashes", "--no-emit-project", "--extra", "cpu",
        "-o", constraints], REPO, env)
    sh([uv(), "venv", "--quiet", "--python", sys.executable, path], path.parent, env)
    sh([uv(), "pip", "install", "--quiet", "--python", path / "bin/python", "-c", constraints, *requirements],
       path.parent, env)
    return path / "bin"


@contextlib.contextmanager
def server(args: list, cwd: Path, env: dict, log: Path):
    """Start `args` (a server on a free port given by {port}) in its own process group; yield the URL."""
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(a).format(port=port) for a in args], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url, log, deadline_s=240, poll_s=1)
        yield url
    finally:
        stop_server(proc)


def classify_over_http(url: str, clip: Path) -> dict:
    with open(clip, "rb") as f:
        r = httpx.post(url + "/classify", files={"video": (clip.name, f, "video/x-flv")}, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    sh([uv(), "build", "--wheel", "--quiet", "--out-dir", out, REPO], REPO, clean_env(out))
    (built,) = out.glob("mmdeploy_av-*.whl")
    return built


def test_wheel_carries_what_users_run(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for path in ("mmdeploy/service.py", "mmdeploy/ui/index.html", "mmdeploy/py.typed",
                 "mmdeploy/_assets/export/onnx-cpu.yaml", "mmdeploy/_assets/recipes/synth-cpu.yaml"):
        assert path in names, path
    shipped = {Path(n).name for n in names if n.startswith("mmdeploy/_assets/")}
    assert shipped == {p.name for p in [*REPO.glob("export/*.yaml"), *REPO.glob("training/recipes/*.yaml")]}
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert "Requires-Dist: torch==2.11.0" in meta and "Requires-Dist: torchaudio==2.11.0" in meta


def test_wheel_trains_exports_classifies_and_serves_outside_the_checkout(wheel, tmp_path, media_dir):
    env = clean_env(tmp_path)
    bin_ = fresh_venv(tmp_path / "venv", env, [f"{wheel}[cpu]"])
    work = tmp_path / "work"
    work.mkdir()
    where = sh([bin_ / "python", "-c", "import mmdeploy; print(mmdeploy.__file__)"], work, env).stdout
    assert str(tmp_path / "venv") in where and str(REPO) not in where  # the installed package, not the checkout
    mm = bin_ / "mmdeploy"
    sh([mm, "train", "synth-cpu", "--out", "run", "--set", "data.synth.clips=48", "--set", "train.epochs=1",
        "--set", "model.audio.width=8", "--set", "model.video.width=8"], work, env)
    sh([mm, "export", "run", "--onnx", "--target", "onnx-cpu"], work, env)
    clip = next((work / "data/synth/clips").glob("*.mp4"))
    result = json.loads(sh([mm, "classify", clip, "--model", "run", "--json"], work, env).stdout)
    assert result["backend"].startswith("onnxruntime") and result["label"] in result["probs"]
    with server([mm, "serve", "--model", "run", "--port", "{port}"], work, env, tmp_path / "serve.log") as url:
        answer = classify_over_http(url, media_dir / CLIP)
        assert answer["label"] in answer["probs"] and answer["file"] == CLIP
        assert httpx.get(url + "/ui/", timeout=10).status_code == 200


def test_built_bento_serves_a_real_clip_from_a_clean_environment(tiny_exported, tmp_path, media_dir):
    env = clean_env(tmp_path)
    store = ("from mmdeploy.bundle import load_bundle; from mmdeploy.export import save_to_bentoml; "
             f"b = load_bundle({str(tiny_exported[0])!r}); print(save_to_bentoml(b, b.export_dir / 'model.onnx'))")
    model_tag = sh([sys.executable, "-c", store], REPO, env).stdout.strip()
    # from the repository root (pyproject's [tool.bentoml.build]); MMDEPLOY_MODEL set at build time must not
    # keep the store model out of the Bento (it only overrides at serve time)
    built = sh(["bentoml", "build", "-o", "tag"], REPO, {**env, "MMDEPLOY_MODEL": str(tiny_exported[0])})
    tag = re.search(r"av-classifier:\w+", built.stdout).group(0)
    bento = tmp_path / "bentoml/bentos" / Path(tag.replace(":", "/"))
    assert f"tag: {model_tag}" in (bento / "bento.yaml").read_text()  # the store model travels with it
    # self-contained: exported to one .bento file and imported into an empty home, it brings its model along
    sh(["bentoml", "export", tag, tmp_path / "av.bento"], tmp_path, env)
    env = clean_env(tmp_path, BENTOML_HOME=str(tmp_path / "clean-home"))
    sh(["bentoml", "import", tmp_path / "av.bento"], tmp_path, env)
    stored = next((tmp_path / "clean-home/models").rglob("model.safetensors"))
    assert stored.read_bytes() == (tiny_exported[0] / "model.safetensors").read_bytes()
    locked = (bento / "env/python/requirements.txt").read_text()
    for pin in ("torch==2.11.0", "torchaudio==2.11.0", "onnxruntime==", "av==", "bentoml=="):
        assert re.search(rf"^{re.escape(pin)}", locked, re.M), pin
    bin_ = fresh_venv(tmp_path / "bento-venv", env, ["-r", bento / "env/python/requirements.txt"])
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    missing = sh([bin_ / "python", "-c", "import importlib.util as u; print(u.find_spec('mmdeploy'))"], outside, env)
    assert missing.stdout.strip() == "None"  # only the Bento's own copy of mmdeploy can serve
    with server([bin_ / "bentoml", "serve", tag, "--host", "127.0.0.1", "--port", "{port}"], outside, env,
                tmp_path / "bento.log") as url:
        answer = classify_over_http(url, media_dir / CLIP)
        assert answer["label"] in answer["probs"] and answer["modalities"]


def test_plain_bentoml_serve_from_the_repository_root(tiny_exported, tmp_path, media_dir):
    """`bentoml serve` with no argument, the way BentoML users type it: pyproject's [tool.bentoml.build]."""
    env = clean_env(tmp_path, MMDEPLOY_MODEL=str(tiny_exported[0]), MMDEPLOY_BACKEND="onnxruntime")
    with server(["bentoml", "serve", "--host", "127.0.0.1", "--port", "{port}"], REPO, env,
                tmp_path / "root.log") as url:
        answer = classify_over_http(url, media_dir / CLIP)
        assert answer["label"] in answer["probs"] and answer["backend"].startswith("onnxruntime")
