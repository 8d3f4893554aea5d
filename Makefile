# One setup command, one test command (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast lint bench

setup:
	@if command -v apt-get >/dev/null 2>&1 && [ ! -d /usr/share/datasets/fashion-mnist ]; then \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
		|| echo "warning: could not apt-get install dataset-fashion-mnist; torchvision will download Fashion-MNIST where a network exists"; \
	fi
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt

test:
	$(BIN)/python -m pytest -q

test-fast:
	$(BIN)/python -m pytest -q -m "not slow"

lint:
	$(BIN)/ruff check .

bench:
	$(BIN)/python benchmarks/presets_complexity.py
	$(BIN)/python benchmarks/fused_speed.py
