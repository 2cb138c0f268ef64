# Every target sets up .venv first (idempotent), so each works on a fresh machine.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | sha1sum | cut -c1-12)

.PHONY: venv run test lint goldens clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[test]"
	rm -f $(VENV)/.installed-* && touch $(STAMP)

# The main job on its embedded default: built-in tiny random model, local folder output.
run: venv
	$(VENV)/bin/raytts run jobs/examples/job.yaml

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 $(VENV)/bin/pytest -q

# Regenerate tests/fixtures/goldens from upstream chattts 0.2.5 (separate virtualenv, large download).
goldens: venv
	bash tools/goldens/make_goldens.sh

clean:
	rm -rf out .pytest_cache .ruff_cache
