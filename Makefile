# Two commands: `make demo` (the main job end to end on synthetic data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MM := $(VENV)/bin/mmdeploy
RUN ?= runs/demo

.PHONY: install demo test browser clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[cpu,dev]'
	@touch $@

install: $(VENV)/.installed

# Headless Chromium for the /ui browser test (Debian's package; playwright drives it, never downloads one).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "note: could not install chromium; the browser test will be skipped"; \
	  else echo "note: chromium missing and not root; the browser test will be skipped"; fi; }

demo: install
	$(MM) train training/recipes/synth-cpu.yaml --out $(RUN)
	$(MM) eval $(RUN)
	$(MM) export $(RUN) --onnx
	$(MM) classify data/synth/clips --model $(RUN) --limit 3

test: install browser
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
