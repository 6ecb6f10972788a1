# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use: torch first (so pip does not pull a CUDA build where a CPU one is
# wanted), then the project with the pins of constraints.txt.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" \
		$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps $$(awk '!/^#/ && NF == 2 { print $$2 }' nodeps.txt)
	$(BIN)/gguf-tool setup --with-tools
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/upload-driver demo

test: $(STAMP)
	$(BIN)/python -m pytest

.PHONY: demo test
