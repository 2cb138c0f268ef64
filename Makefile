# Every target sets up .venv first (idempotent), so each works on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt requirements-dev.lock | sha1sum | cut -c1-12)

.PHONY: venv lock run test check lint goldens clean

venv: $(STAMP)

# Exactly the locked versions (requirements-dev.lock, made by `make lock`): --no-deps installs nothing the lock does
# not name, and tools/check_lock.py fails when the lock misses a dependency (extras included) or a version differs,
# so a new PyPI release cannot change a test run.
$(STAMP): pyproject.toml constraints.txt requirements-dev.lock
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --no-deps -c constraints.txt -r requirements-dev.lock
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	$(VENV)/bin/pip check
	$(VENV)/bin/python tools/check_lock.py
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# Re-resolve the dev/test dependencies from PyPI into requirements-dev.lock, then the image locks
# cluster/image/requirements-{gpu,cpu}.lock (hashed, same versions) from it (on purpose, then run the tests). The CPU
# image's torch comes from download.pytorch.org/whl/cpu; where that is unreachable, TORCH_CPU_WHEELS=DIR names a
# folder holding the same wheel file.
lock:
	bash tools/lock.sh
	bash tools/image_lock.sh

# The main job on its embedded default: built-in tiny random model, local folder output.
run: venv
	$(VENV)/bin/raytts run jobs/examples/job.yaml

# ruff (complexity included), file and function sizes (tools/check_sizes.py), and the house's import contracts
# (pyproject.toml [tool.importlinter]: jobs -> pipeline -> actors, layers inside actors, no cycles among siblings).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python tools/check_sizes.py
	$(VENV)/bin/lint-imports

# The whole suite, as CI runs it: tests/unit (no Ray), tests/ray (a local Ray, Serve, S3 on loopback), tests/cluster
# (several Ray nodes on this machine), slow tests included.
test: lint
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(VENV)/bin/pytest -q --durations=15

# The fast loop while working: lint and the unit tier without its slow tests (a few minutes on 2 cores).
check: lint
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(VENV)/bin/pytest -q tests/unit -m "not slow" --durations=10

# Regenerate tests/fixtures/goldens from upstream chattts 0.2.5 (separate virtualenv, large download).
goldens: venv
	bash tools/goldens/make_goldens.sh

clean:
	rm -rf out .pytest_cache .ruff_cache
