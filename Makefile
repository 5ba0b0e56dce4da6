# Entry points for a fresh machine: `make demo` (set-up + kernel on the synthetic samples), `make test-fast`
# (the fast tier, no weight build) and `make test` (the full suite, what CI runs). Each does its own set-up.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ENSEMBLE := artifacts/weights/ensemble.json
SAMPLES := samples
FAST := not (weights or shared or bundle or slow)

.PHONY: setup demo test test-fast lint bundle clean

setup: $(ENSEMBLE)

# The project's packages are installed editable, so scripts and tests import them without sys.path edits.
$(INSTALLED): requirements.txt requirements-kernel.txt requirements-sources.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-sources.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(ENSEMBLE): $(INSTALLED) $(wildcard weights/*.py weights/archs/*.py zootools/*.py)
	$(PY) -m zootools build --out $(dir $@)

demo: $(ENSEMBLE)
	$(PY) -m bench.samples --out $(SAMPLES)
	$(PY) kernel.py --videos $(SAMPLES) --out submission.csv --report report.jsonl
	cat submission.csv

test-fast: $(INSTALLED)
	$(PY) -m pytest -q -m "$(FAST)"

test: $(ENSEMBLE)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

lint: $(INSTALLED)
	$(PY) -m ruff check .

bundle: $(ENSEMBLE)
	$(PY) -m packager build --out dist
	$(PY) -m packager verify dist

clean:
	rm -rf artifacts samples dist submission.csv report.jsonl
