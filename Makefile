# Two commands do all setup on a fresh machine:  `make test`  and  `make demo`.
# Without an active virtual environment they create .venv here. torch is pinned to the CPU build that
# lies on this disk (2.13.0) before anything else is installed, so no multi-GB CUDA wheel is fetched;
# on a machine that already has torch (any version >= 2.4) in the active environment, it is kept.
PY ?= python3
ifdef VIRTUAL_ENV
VENV_PY := $(VIRTUAL_ENV)/bin/python
else
VENV_PY := .venv/bin/python
endif
STAMP := $(dir $(VENV_PY)).gatedelta-installed

.PHONY: test demo lint install clean

$(VENV_PY):
	$(PY) -m venv .venv

$(STAMP): $(VENV_PY) pyproject.toml
	$(VENV_PY) -m pip install -q --upgrade pip
	$(VENV_PY) -c "import torch" 2>/dev/null || $(VENV_PY) -m pip install -q torch==2.13.0
	$(VENV_PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV_PY) -m ruff check gatedelta tests benchmarks
	TRITON_INTERPRET=1 $(VENV_PY) -m pytest -x -q tests

demo: $(STAMP)
	$(VENV_PY) -m gatedelta.cli demo $(DEMO_ARGS)

lint: $(STAMP)
	$(VENV_PY) -m ruff check gatedelta tests benchmarks

clean:
	rm -rf .venv runs .pytest_cache .ruff_cache
