# Two commands on a fresh clone:
#   make train   set up, prepare the default Shakespeare data, train train_mps.py to completion
#   make test    set up and run every test (what CI runs)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
EXTRAS ?= dev,data,plots,jax
comma  := ,
STAMP  := $(VENV)/.installed-$(subst $(comma),_,$(EXTRAS))

.PHONY: setup data train test lint clean ablations lr-sweep

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

# The README's ablation table: each switch of the recipe, 3 seeds, full runs, two at a time with one
# thread each (about 5 hours on 2 cores). The switches are measured on the canonical recipe without its
# EMA (`canonical:ema_decay=0.0`, the reference of the paired differences), where they were chosen.
# ABLATIONS_OUT: where the report goes.
ABLATIONS := canonical baseline canonical:ema_decay=0.0 \
	canonical:ema_decay=0.0,optimizer=muon canonical:ema_decay=0.0,zero_init_proj=True \
	canonical:ema_decay=0.0,weight_decay=0.0 canonical:ema_decay=0.0,kinetic_energy=0.01 \
	canonical:ema_decay=0.0,jacobian_frobenius=0.01 canonical:ema_decay=0.0,grad_clip=0.0 \
	canonical:ema_decay=0.0,schedule=wsd canonical:ema_decay=0.0,schedule=constant,learning_rate=0.0003,warmup_iters=0
ABLATIONS_OUT ?= results/benchmark/ablations-$(shell date +%Y%m%d-%H%M%S)

ablations: data
	$(BIN)/python scripts/benchmark.py --configs $(ABLATIONS) --baseline canonical:ema_decay=0.0 --seeds 0 1 2 --jobs 2 \
		--out $(ABLATIONS_OUT)

# The learning rates around the recipe's, one seed (a screen: the seed-to-seed spread is ~0.03): AdamW's peak
# 1.5e-3 / 3e-3 / 6e-3 and Muon's muon_lr 0.01 / 0.02 / 0.04, on the same reference. About 1.5 hours on 2 cores.
LR_SWEEP := canonical:ema_decay=0.0 \
	canonical:ema_decay=0.0,learning_rate=0.0015 canonical:ema_decay=0.0,learning_rate=0.006 \
	canonical:ema_decay=0.0,optimizer=muon,muon_lr=0.01 canonical:ema_decay=0.0,optimizer=muon \
	canonical:ema_decay=0.0,optimizer=muon,muon_lr=0.04
LR_SWEEP_OUT ?= results/benchmark/lr_sweep-$(shell date +%Y%m%d-%H%M%S)

lr-sweep: data
	$(BIN)/python scripts/benchmark.py --configs $(LR_SWEEP) --baseline canonical:ema_decay=0.0 --seeds 0 --jobs 2 \
		--out $(LR_SWEEP_OUT)

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) out
