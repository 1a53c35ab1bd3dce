"""Where compare keeps its runs, and when a run counts as finished (so a resumed compare skips it)."""
from __future__ import annotations

import json
from pathlib import Path


def run_dir(out: Path, method: str, seed: int) -> Path:
    return out / "runs" / f"{method}-seed{seed}"


def finished(run: Path) -> bool:
    """A run that trained all its epochs (or stopped early): its end-of-training plots exist, and its
    checkpoint says it is done."""
    state = run / "checkpoint" / "state.json"
    if not ((run / "model.json").is_file() and state.is_file() and (run / "plots" / "accuracy.png").is_file()):
        return False
    meta = json.loads((run / "model.json").read_text())
    epochs = meta.get("recipe", {}).get("train", {}).get("epochs")
    st = json.loads(state.read_text())["state"]
    early = meta.get("recipe", {}).get("train", {}).get("early_stop")
    return epochs is None or st["epochs_done"] >= epochs or bool(early and st["bad_epochs"] >= early)
