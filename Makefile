# Two commands: `make demo` (the main job end to end on synthetic data) and `make test`.
# Every install is made from uv.lock (`make lock` is the only thing that changes it); uv itself is
# bootstrapped from PyPI into .uv/ at one pinned version.
PYTHON ?= python3
VENV ?= .venv
UV_VERSION ?= 0.13.9
UV := .uv/bin/uv
PY := $(VENV)/bin/python
MM := $(VENV)/bin/mmdeploy
RUN ?= runs/demo
# What the tests install (openvino, nncf: the CPU engines' tests run OpenVINO and both int8 quantizers) and what the Bento carries
# (serving/requirements.txt: ONNX Runtime CPU + OpenVINO, so `auto` can run the engine export measured fastest).
EXTRAS ?= --extra cpu --extra dev --extra openvino --extra nncf
SERVING_EXTRAS := --extra cpu --extra openvino
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: install lock lock-check requirements demo test tools clean

$(UV):
	@test -x $(UV) || { $(PYTHON) -m venv .uv && .uv/bin/pip install -q --disable-pip-version-check "uv==$(UV_VERSION)"; }

$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --compile-bytecode $(EXTRAS)
	@$(PY) -m compileall -q -j 0 mmdeploy  # this checkout's bytecode too: the first `mmdeploy classify` starts warm
	@touch $@

install: $(VENV)/.installed

# The only way the lock changes: re-resolve to the newest releases inside pyproject's bounds, then export
# the serving set (the Bento's requirements) from it. Commit both files.
lock: | $(UV)
	$(UV) lock --upgrade $(LOCK_ARGS)
	$(MAKE) requirements

requirements: | $(UV)
	$(UV) export --frozen --quiet --no-hashes --no-emit-project $(SERVING_EXTRAS) --no-header -o serving/requirements.txt

# CI: pyproject and the lock must agree, and the Bento's requirements must be the lock's.
lock-check: | $(UV)
	@$(UV) lock --check || { echo "error: uv.lock does not match pyproject.toml; run 'make lock' and commit uv.lock"; exit 1; }
	@$(UV) export --frozen --quiet --no-hashes --no-emit-project $(SERVING_EXTRAS) --no-header | cmp -s - serving/requirements.txt \
	  || { echo "error: serving/requirements.txt differs from uv.lock; run 'make requirements' and commit it"; exit 1; }

# Debian's packages the tests drive: headless Chromium for the /ui browser tests (playwright drives it, never
# downloads one) and the ffmpeg CLI that publishes live test streams (udp/http/stdin/HLS on 127.0.0.1).
TOOLS := chromium ffmpeg
tools:
	@missing=""; for t in $(TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null) \
	      || echo "note: could not install$$missing; the tests that need them will be skipped"; \
	  else echo "note:$$missing missing and not root; the tests that need them will be skipped"; fi; fi

demo: install
	$(MM) train synth-cpu --out $(RUN)
	$(MM) eval $(RUN)
	$(MM) export $(RUN) --onnx
	$(MM) classify data/synth/clips --model $(RUN) --limit 3

test: lock-check install tools
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .uv runs .pytest_cache
