# The README's two commands: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cksum requirements.txt | cut -d' ' -f1)

.PHONY: install test demo bench evaluate train device-wheels clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; run make PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	# the project itself, from this checkout (the micro model stays in assets/): the `sam2-adapter` command
	$(BIN)/python -m pip install --quiet --no-deps -e .
	rm -f $(VENV)/.installed-*
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m sam2_adapter.cli demo --out out/demo

bench: $(STAMP)
	for script in bench/bench_*.py; do $(BIN)/python $$script || exit 1; done

evaluate: $(STAMP)
	$(BIN)/python tools/evaluate_micro.py

train: $(STAMP)
	$(BIN)/python tools/train_micro.py --out assets/micro/sam2_micro.pt

# Wheels for a lent GPU machine (no internet there): see README, "On a GPU".
device-wheels: $(STAMP)
	$(BIN)/python tools/device_wheels.py --out .whl

clean:
	rm -rf $(VENV) out .pytest_cache
