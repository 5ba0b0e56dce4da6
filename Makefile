# Two entry points for a fresh machine: `make demo` (set-up + kernel on the synthetic samples) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
ENSEMBLE := artifacts/weights/ensemble.json
SAMPLES := samples

.PHONY: setup demo test bundle clean

setup: $(ENSEMBLE)

$(INSTALLED): requirements.txt requirements-kernel.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(ENSEMBLE): $(INSTALLED) $(wildcard weights/*.py weights/archs/*.py)
	$(PY) -m weights build --out $(dir $@)

demo: $(ENSEMBLE)
	$(PY) -m bench.samples --out $(SAMPLES)
	$(PY) kernel.py --videos $(SAMPLES) --out submission.csv --report report.jsonl
	cat submission.csv

test: $(ENSEMBLE)
	$(PY) -m pytest -q tests

bundle: $(ENSEMBLE)
	$(PY) -m packager build --out dist
	$(PY) -m packager verify dist

clean:
	rm -rf artifacts samples dist submission.csv report.jsonl
