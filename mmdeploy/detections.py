"""Acting on what a live source shows: `--on LABEL:THRESHOLD` rules, and what runs when one fires (`--exec CMD`,
`--webhook URL`).

A rule fires on the window where probs[LABEL] first reaches THRESHOLD (a rising edge: not again on the windows
after it while it stays there; again once it fell below and rises anew). An action gets the window's line as
JSON: on its standard input (exec, with LIVE_LABEL, LIVE_SCORE, LIVE_START, LIVE_END, LIVE_SOURCE
in its environment) or as a POST body (webhook). Actions run beside the stream, never in
its way: one at a time per rule; a detection while the previous action still runs is said and skipped; an
action is killed after `ACTION_TIMEOUT_S`. Each outcome comes back as an event line through `say`.
"""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import threading
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable

from mmdeploy.errors import ConfigError

ACTION_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Rule:
    label: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.label}:{self.threshold:g}"


def parse_rule(text: str, classes: list[str]) -> Rule:
    """'LABEL:THRESHOLD' (THRESHOLD in (0, 1]) -> Rule; ConfigError naming the option and the model's classes."""
    label, sep, value = text.rpartition(":")
    try:
        threshold = float(value) if sep else float("nan")
    except ValueError:
        threshold = float("nan")
    if not sep or not label or not 0 < threshold <= 1:
        raise ConfigError(f"--on {text!r}: expected LABEL:THRESHOLD with THRESHOLD in (0, 1], e.g. "
                          f"--on {classes[0] if classes else 'LABEL'}:0.8")
    if label not in classes:
        raise ConfigError(f"--on {text!r}: the model has no class {label!r}; its classes: {', '.join(classes)}")
    return Rule(label, threshold)


class Detector:
    """Rules over window lines; `check(line)` -> the event lines of the rules that fired (and starts their
    actions)."""

    def __init__(self, rules: list[Rule], command: str | None = None, webhook: str | None = None,
                 say: Callable[[dict[str, Any]], None] | None = None):
        if webhook is not None and not webhook.startswith(("http://", "https://")):
            raise ConfigError(f"--webhook {webhook!r}: expected an http:// or https:// URL")
        self.rules, self.webhook, self.say = rules, webhook, say or (lambda e: None)
        self.command = shlex.split(command) if command else None
        self.above = {rule: False for rule in rules}
        self.running: dict[Rule, threading.Thread] = {}

    def check(self, line: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for rule in self.rules:
            p = float(line["probs"].get(rule.label, 0.0))
            was, self.above[rule] = self.above[rule], p >= rule.threshold
            if not self.above[rule] or was:
                continue
            message = f"{rule.label} {p:.3f} >= {rule.threshold:g} at {line['start']:.2f}-{line['end']:.2f} s"
            out.append({"event": "detection", "message": message, "rule": str(rule), "label": rule.label,
                        "score": p, "start": line["start"], "end": line["end"]})
            if self.command or self.webhook:
                busy = self.running.get(rule)
                if busy is not None and busy.is_alive():
                    out.append({"event": "action", "message": f"{rule}: the previous action still runs; "
                                                               "this detection's action is skipped"})
                    continue
                thread = threading.Thread(target=self._act, args=(rule, line, p), daemon=True,
                                          name="mmdeploy-action")
                self.running[rule] = thread
                thread.start()
        return out

    def _act(self, rule: Rule, line: dict[str, Any], score: float) -> None:
        body = json.dumps(line).encode()
        if self.command:
            env = {**os.environ, "LIVE_LABEL": rule.label, "LIVE_SCORE": f"{score:.6f}",
                   "LIVE_START": str(line["start"]), "LIVE_END": str(line["end"]),
                   "LIVE_SOURCE": str(line.get("source", ""))}
            try:
                done = subprocess.run(self.command, input=body, env=env, timeout=ACTION_TIMEOUT_S,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                tail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] if done.returncode else []
                self.say({"event": "action", "message": f"{rule}: --exec exited {done.returncode}"
                                                        + (f" ({tail[0][:200]})" if tail else "")})
            except subprocess.TimeoutExpired:
                self.say({"event": "action", "message": f"{rule}: --exec killed after {ACTION_TIMEOUT_S:g} s"})
            except OSError as exc:
                self.say({"event": "action", "message": f"{rule}: --exec cannot run ({exc})"})
        if self.webhook:
            request = urllib.request.Request(self.webhook, data=body, method="POST",
                                             headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=10) as answer:  # noqa: S310 - the user's own URL
                    self.say({"event": "action", "message": f"{rule}: --webhook answered {answer.status}"})
            except Exception as exc:  # noqa: BLE001 - one line, never a traceback in the stream
                self.say({"event": "action", "message": f"{rule}: --webhook failed ({type(exc).__name__}: {exc})"})
