# deepcf: `make train` and `make test` work on a fresh clone (each installs what it needs).
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.deepcf-installed
# the CPU build of torch, installed first: a ranged torch would pull a multi-GB CUDA build
TORCH  ?= torch==2.13.0

.PHONY: install train test test-full experiments lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check $(TORCH)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

# the study's best experiment on the real MovieLens-100K
train: install
	$(PY) -m deepcf.train experiment=scheduler_lr

test: install
	$(PY) -m pytest -q

# everything, the slow checks too
test-full: install
	$(PY) -m pytest -q -m "slow or not slow"

lint: install
	$(PY) -m ruff check deepcf tests

clean:
	rm -rf outputs .pytest_cache
