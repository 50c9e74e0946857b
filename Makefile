# The README's two commands: `make mnist` (the main job) and `make test`.
# Each sets up its own virtual environment in .venv on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: mnist test lint bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[progress,plot,test]'
	touch $@

# Train LeNet5 on the shipped MNIST with mini_steps 4, then evaluate the checkpoint.
mnist: $(VENV)/.installed
	$(PY) scripts/train.py --data_path data/mnist --mini_steps 4
	$(PY) scripts/eval.py --data_path data/mnist --ckpt_path gradient_accumulation.ckpt

# The linter first: a finding fails the run before the suite (about 24 minutes here) starts.
test: lint
	$(PY) -m pytest tests

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/engines.py
	$(PY) benchmarks/cpu_conv.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/data_parallel.py
	$(PY) benchmarks/weighting.py
	$(PY) benchmarks/batch_ramp.py
	$(PY) benchmarks/text_lm.py
	$(PY) benchmarks/efficientnet.py
	$(PY) benchmarks/zoo.py
	$(PY) benchmarks/efficientnet_init.py
	$(PY) benchmarks/convergence.py

clean:
	rm -rf $(VENV) *.egg-info gradient_accumulation.ckpt
