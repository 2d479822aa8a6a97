# Two commands on a fresh clone:
#   make train   set up, prepare the default Shakespeare data, train train_mps.py to completion
#   make test    set up and run every test (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,data,plots,jax
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),_,$(EXTRAS))

.PHONY: setup data train test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# reinstall only when the dependency declarations change
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $@

setup: $(STAMP)

data: setup
	$(BIN)/python scripts/prepare_shakespeare.py

train: data
	$(BIN)/python train_mps.py

test: setup
	$(BIN)/python -m pytest -m "not gpu"

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) out
