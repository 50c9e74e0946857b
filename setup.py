from setuptools import find_packages, setup

setup(
    name="mindspore-accum",
    version="0.5.0",
    description="Gradient accumulation for MindSpore in graph mode: a large effective batch at the memory "
                "of one micro-batch",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["mindspore_accum", "mindspore_accum.*",
                                    "model_zoo_adapters", "model_zoo_adapters.*"]),
    install_requires=[
        # The range `make test` checks: the whole suite on 2.10, the core tests
        # on the oldest, 2.7.0 (Makefile: OLDEST_MINDSPORE); see the README.
        # The CPU wheel is also the GPU wheel's Python side.
        "mindspore>=2.7,<2.11",
        # MindSpore 2.10's wheel carries extension modules built against
        # NumPy 1.x ("A module that was compiled using NumPy 1.x cannot be run
        # in NumPy 2") and NumpySlicesDataset fails on 1-D columns with NumPy 2.
        "numpy>=1.25,<2",
    ],
    extras_require={
        # The progress bar (scripts/train.py); the library runs without it.
        "progress": ["tqdm>=4.60"],
        # scripts/plot.py and plot_grad_flow; imported only there, never by training.
        "plot": ["matplotlib>=3.5"],
        # mindcv, MindSpore's vision model zoo (pure Python, 0.3.0 verified on MindSpore 2.10):
        # --model efficientnet_b0 and --model mindcv:<name>; imported only when one is asked for.
        "vision": ["mindcv>=0.3,<0.4"],
        # The tests, and the linter `make test` runs first (ruff.toml; pinned to a minor
        # version so that a new release's rules cannot fail CI overnight). mindcv, so that
        # the recipes' tests run in CI.
        # pytest-xdist: the suite in two processes (make test's PYTEST_WORKERS), since much of it is single-threaded
        # (compiles, subprocess start-ups) on a two-core machine.
        "test": ["pytest>=7", "pytest-xdist>=3,<4", "ruff>=0.17,<0.18", "tqdm>=4.60", "matplotlib>=3.5",
                 "mindcv>=0.3,<0.4"],
    },
)
