"""The settings object: every MMDEPLOY_* knob, one name per meaning, bad values one line naming the
variable, and the README's table generated from the model (so neither can drift)."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from mmdeploy.errors import ConfigError
from mmdeploy.settings import PREFIX, RENAMED, Settings, knob_table

REPO = Path(__file__).resolve().parents[1]


def test_readme_table_is_the_model():
    text = (REPO / "serving" / "README.md").read_text()
    table = text.split("<!-- knobs:", 1)[1].split("-->", 1)[1].split("<!-- /knobs -->", 1)[0].strip()
    assert table == knob_table(), "serving/README.md's knob table differs: paste mmdeploy.settings.knob_table()"


def test_every_variable_the_code_names_is_a_setting():
    """No module reads or names an MMDEPLOY_* variable that the settings object does not define."""
    fields = {PREFIX + name.upper() for name in Settings.model_fields}
    named = set()
    for path in (REPO / "mmdeploy").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                named |= set(re.findall(r"MMDEPLOY_[A-Z_]+[A-Z]", node.value))
    assert named - fields - set(RENAMED) == set()


def test_no_module_reads_the_environment_for_a_knob():
    """The settings object is the only reader (os.environ.get("MMDEPLOY_...") anywhere else is a second one)."""
    readers = []
    for path in (REPO / "mmdeploy").rglob("*.py"):
        if path.name == "settings.py":
            continue
        text = path.read_text()
        if re.search(r"environ(\.get)?[\[(]\s*[\"']MMDEPLOY_", text):
            readers.append(str(path.relative_to(REPO)))
    assert readers == []


def test_values_from_env_and_bad_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("MMDEPLOY_FRAME_THREADS", "4")
    monkeypatch.setenv("MMDEPLOY_REFERENCE_DECODE", "1")
    monkeypatch.setenv("MMDEPLOY_DECODE_PROCESSES", "3")
    s = Settings.from_env()
    assert (s.frame_threads, s.reference_decode, s.decode_count()) == (4, True, 3)
    assert Settings.from_env(backend="torch").backend == "torch"  # an option wins over the environment
    monkeypatch.setenv("MMDEPLOY_DECODE_TIMEOUT_S", "-1")
    with pytest.raises(ConfigError, match=r"MMDEPLOY_DECODE_TIMEOUT_S='-1': .*greater than 0"):
        Settings.from_env()


def test_the_old_two_meaning_name_is_refused_with_both_new_names(monkeypatch):
    monkeypatch.setenv("MMDEPLOY_DECODE_THREADS", "8")
    with pytest.raises(ConfigError) as err:
        Settings.from_env()
    assert "MMDEPLOY_DECODE_PROCESSES" in str(err.value) and "MMDEPLOY_FRAME_THREADS" in str(err.value)


def test_to_env_round_trips(monkeypatch):
    s = Settings.from_env(model="/runs/demo", max_upload_mb=0.5, batching=False, frame_threads=2)
    for key, value in s.to_env().items():
        monkeypatch.setenv(key, value)
    assert Settings.from_env() == s
