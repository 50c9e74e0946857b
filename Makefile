# The README's two commands: `make mnist` (the main job) and `make test`.
# Each sets up its own virtual environment in .venv on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: mnist test test-oldest lint bench clean

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[progress,plot,test]'
	touch $@

# The oldest MindSpore setup.py accepts, in a second environment: `make test` runs the core tests on it too.
OLDEST_MINDSPORE ?= 2.7.0
OLD_VENV ?= .venv-oldest
OLD_PY := $(OLD_VENV)/bin/python
# The Cells' equivalence, the Cell under Model, resume on both engines, the global batch, one CLI run with eval.py.
CORE_TESTS := tests/test_equivalence.py tests/test_accumulation_cell.py tests/test_resume.py \
	tests/test_global_batch.py \
	tests/test_train_model.py::test_model_train_script_equals_train_py_and_eval_py_scores_its_checkpoint \
	tests/test_train_model.py::test_resume_mid_window_from_the_train_cell_checkpoint_equals_the_uninterrupted_run

$(OLD_VENV)/.installed: setup.py
	$(PYTHON) -m venv $(OLD_VENV)
	$(OLD_PY) -m pip install --quiet --upgrade pip
	$(OLD_PY) -m pip install --quiet 'mindspore==$(OLDEST_MINDSPORE)' -e '.[progress,plot,test]'
	touch $@

# Train LeNet5 on the shipped MNIST with mini_steps 4, then evaluate the checkpoint.
mnist: $(VENV)/.installed
	$(PY) scripts/train.py --data_path data/mnist --mini_steps 4
	$(PY) scripts/eval.py --data_path data/mnist --ckpt_path gradient_accumulation.ckpt

# Test processes (pytest-xdist): much of the suite is single-threaded (compiles, subprocess start-ups).
PYTEST_WORKERS ?= 2

# The linter first: a finding fails the run before the suite starts.
test: lint
	$(PY) -m pytest -n $(PYTEST_WORKERS) tests
	$(MAKE) test-oldest

# The core tests on the oldest supported MindSpore (about 3 minutes here, its environment set up once).
test-oldest: $(OLD_VENV)/.installed
	$(OLD_PY) -c 'import mindspore; print("MindSpore", mindspore.__version__)'
	$(OLD_PY) -m pytest -n $(PYTEST_WORKERS) $(CORE_TESTS)

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

bench: $(VENV)/.installed
	$(PY) benchmarks/main_job.py
	$(PY) benchmarks/overhead.py
	$(PY) benchmarks/own_loop.py
	$(PY) benchmarks/own_loop.py --host_blocking
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
	rm -rf $(VENV) $(OLD_VENV) *.egg-info gradient_accumulation.ckpt
