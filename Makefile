# Two entry points on a fresh machine: `make demo` and `make test`. Both build the venv they need.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test unit lint e2e k8s bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/hami demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest tests/unit tests/integration

test: lint unit e2e

k8s:
	bash tools/k8s/build.sh

e2e: $(STAMP) k8s
	$(BIN)/pytest tests/e2e

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
