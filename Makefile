# Two commands (see README):  make demo   -- set up + run the main job on generated data
#                             make test   -- set up + run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: env demo test bench

env:
	bash tools/setup_env.sh

demo: env
	$(PY) tools/demo.py

test: env
	$(PY) -m pytest --import-mode=importlib --doctest-modules mmmod tests $(PYTEST_ARGS)

bench: env
	$(PY) tools/benchmark_mod.py
