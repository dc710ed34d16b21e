# One command to set up and run the demo, one to set up and run the tests (README).
PY      ?= python3
VENV    := .venv
VPY     := $(VENV)/bin/python
STAMP   := $(VENV)/.installed

.PHONY: venv demo test bench soak typecheck clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# S3=1: archive to an in-memory S3 endpoint (stopped with the demo) instead of demo-data/archive/.
demo: $(STAMP)
	$(VPY) scripts/demo.py $(if $(S3),--s3)

# One test worker per CPU (pytest-xdist); a test file stays on one worker, so its module-scoped
# fixtures are built once. PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= auto

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(VPY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(VPY) bench/run.py

# Not in CI: kill -9, S3 cuts and stalls and a second archiver under live writes (scripts/soak.py);
# CYCLES=20 for a shorter one, SOAK_ARGS for the others (--seed, --rows, ...).
soak: $(STAMP)
	$(VPY) scripts/soak.py $(if $(CYCLES),--cycles $(CYCLES)) $(SOAK_ARGS)

typecheck: $(STAMP)
	$(VPY) -m mypy common archiver restore validate cost wizard query erase expire hold bench scripts

clean:
	rm -rf $(VENV) demo-data .pytest_cache .mypy_cache
