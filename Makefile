# modelport: `make demo` converts a built-in sample model to GGUF and ONNX, runs it and validates both against the
# original; `make test` runs the tests.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SAMPLE := samples/out

# llama-cpp-python builds llama.cpp from source. On x86-64 we build it for portable AVX2 instead of -march=native:
# on CPUs with AMX, ggml's AMX path crashes on quantized models (modelport also turns it off at load time).
ifeq ($(shell uname -m),x86_64)
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON
endif

.PHONY: setup demo test fuzz bench clean

# optimum's exporter lives in its own environment: optimum-onnx 0.1 caps transformers below 4.58, the default
# environment has transformers 5 (mlx-lm 0.30+ and onnxruntime-genai's builder need it). `make test` runs the tests
# marked `optimum` there.
OPTIMUM_VENV := .venv-optimum
OPTIMUM_EXTRAS := llama,torch,onnx,optimum,test

setup: $(VENV)/.installed

# $(1): the venv, $(2): modelport's extras
define make_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/pip install -q --upgrade pip
	# the CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build
	$(1)/bin/pip install -q torch==2.13.0
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(1)/bin/pip install -q -e '.[$(2)]'
	# setuptools may leave build metadata here; from the project root it would shadow the installed entry points
	rm -rf modelport.egg-info
	touch $(1)/.installed
endef

$(VENV)/.installed: pyproject.toml Makefile
	$(call make_venv,$(VENV),all)

$(OPTIMUM_VENV)/.installed: pyproject.toml Makefile
	$(call make_venv,$(OPTIMUM_VENV),$(OPTIMUM_EXTRAS))

demo: setup
	$(BIN)/python -m modelport.samples.tiny llama $(SAMPLE)/tiny-llama
	$(BIN)/modelport convert $(SAMPLE)/tiny-llama $(SAMPLE)/tiny-llama-f16.gguf --dtype f16 --force
	$(BIN)/modelport inspect $(SAMPLE)/tiny-llama-f16.gguf
	$(BIN)/python -m modelport.samples.prompt $(SAMPLE)/tiny-llama-f16.gguf "The capital of France is"
	$(BIN)/modelport validate $(SAMPLE)/tiny-llama $(SAMPLE)/tiny-llama-f16.gguf
	$(BIN)/modelport convert $(SAMPLE)/tiny-llama $(SAMPLE)/tiny-llama-onnx --to onnx --ops ort --force
	$(BIN)/modelport validate $(SAMPLE)/tiny-llama $(SAMPLE)/tiny-llama-onnx

# pytest-xdist: one worker per core, at most 4 (each holds its own torch, runtimes and test checkpoints):
# the suite takes 15.5 min on 2 cores against 29.8 min in one process. Then optimum's tests in their environment.
test: setup $(OPTIMUM_VENV)/.installed
	$(BIN)/python -m pytest -q -ra -n auto --maxprocesses 4
	$(OPTIMUM_VENV)/bin/python -m pytest -q -ra -n auto --maxprocesses 4 -m optimum

# every reader fuzzed by hypothesis at scale: MODELPORT_FUZZ_EXAMPLES inputs per reader (default 100000), fresh
# randomness, each input under a time limit and 1 GB more address space than the process holds (tests/test_fuzz.py)
MODELPORT_FUZZ_EXAMPLES ?= 100000
fuzz: setup
	MODELPORT_FUZZ_AT_SCALE=1 MODELPORT_FUZZ_EXAMPLES=$(MODELPORT_FUZZ_EXAMPLES) $(BIN)/python -m pytest -q \
		-p no:cacheprovider --hypothesis-show-statistics tests/test_fuzz.py

bench: setup
	$(BIN)/python bench/bench_convert.py

clean:
	rm -rf $(SAMPLE) bench/out .pytest_cache
