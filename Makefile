# The two set-up commands of the README: `make demo` and `make test`.
# Both create .venv on first use: torch first (so pip does not pull a CUDA build where a CPU one is
# wanted), then the project with the pins of constraints.txt (llama.cpp is compiled once, for the
# library), then what pip cannot resolve with those pins (`merge-tool setup`: llm-compressor without
# its transformers pin) and llama.cpp's converter (`gguf-tool setup`). llama-quantize and
# llama-imatrix are compiled the first time a step needs them (an importance matrix), or at once
# with `make llama-tools`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml constraints.txt tools/merge_tool/nodeps.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch
	CMAKE_ARGS="$${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}" \
		$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	$(BIN)/merge-tool setup
	$(BIN)/gguf-tool setup
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/upload-driver demo

test: $(STAMP)
	$(BIN)/python -m pytest

llama-tools: $(STAMP)
	$(BIN)/gguf-tool setup --with-tools

.PHONY: demo test llama-tools
