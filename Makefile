# Two entry points for a fresh Linux machine with Python 3.11+ and make:
#   make demo   - start the local cluster and run a workload against it
#   make test   - black, flake8, mypy, shellcheck, then the whole pytest suite
# Both create .venv and install into it first when that is needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TYPECHECK_LINKS := build/typecheck

# Directories of standalone scripts that mypy checks file by file: the lessons loosely (labs.py,
# the lab runner, imports its machinery from cluster_runner_simulation.labs), the examples and
# the exercises' reference solutions strictly.
LESSON_DIRS  := 01-zmq-basics
EXAMPLE_DIRS := $(sort $(dir $(wildcard examples/*/*.py docs/solutions/*/*.py)))

.PHONY: help venv demo test check lint typecheck shellcheck pytest format clean

help:
	@echo "make demo      start the local cluster, run a workload, Ctrl-C stops it"
	@echo "make test      run every check and the full test suite"
	@echo "make format    rewrite the code with black"
	@echo "make clean     remove .venv and build artefacts"

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "error: Python 3.11 or newer is needed (found $$($(PYTHON) --version))" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt -r requirements-dev.txt
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	@PATH="$(CURDIR)/$(BIN):$$PATH" ./docker/simulate-cluster.sh demo

test: check pytest

check: lint typecheck shellcheck

lint: $(STAMP)
	$(BIN)/black --check --quiet .
	$(BIN)/flake8 .

# mypy cannot follow setuptools' editable import hook, so it reads the packages
# through symlinks that carry their importable names.
typecheck: $(STAMP)
	@mkdir -p $(TYPECHECK_LINKS)
	@ln -sfn ../../02-cluster-patterns $(TYPECHECK_LINKS)/cluster_patterns
	@ln -sfn ../../03-cluster-runner-simulation $(TYPECHECK_LINKS)/cluster_runner_simulation
	@ln -sfn ../../docker/simulator $(TYPECHECK_LINKS)/cluster_simulator
	MYPYPATH=$(TYPECHECK_LINKS) $(BIN)/mypy -p cluster_patterns -p cluster_runner_simulation \
		-p cluster_simulator
	@for d in $(LESSON_DIRS); do echo "mypy $$d"; \
		MYPYPATH=$(TYPECHECK_LINKS) $(BIN)/mypy $$d/*.py || exit 1; done
	@for d in $(EXAMPLE_DIRS); do echo "mypy --strict $$d"; \
		MYPYPATH=$(TYPECHECK_LINKS) $(BIN)/mypy --strict $$d*.py || exit 1; done

shellcheck:
	@if command -v shellcheck >/dev/null 2>&1; then \
		files=$$(git ls-files '*.sh' 2>/dev/null || find . -name '*.sh' -not -path './.venv/*'); \
		if [ -n "$$files" ]; then echo "shellcheck $$files"; shellcheck $$files; fi; \
	elif [ -n "$$CI" ]; then echo "error: shellcheck is missing in CI" >&2; exit 1; \
	else echo "shellcheck not installed: skipped (apt-get install shellcheck)"; fi

pytest: $(STAMP)
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/black .

clean:
	rm -rf $(VENV) build .mypy_cache .pytest_cache .hypothesis
