"""Issue 15 (1): two runs on one --ckpt_path, as two real processes.

Before the lock, the second run pruned the first's states, their metrics
interleaved, and the last to finish silently owned the checkpoint. Now the
second is refused at start, naming the path and the first run's process id;
and a run killed with SIGKILL leaves no lock behind (the kernel drops a flock
with its process), which is the control that the lock is not a stale file.
"""

import os
import signal
import subprocess
import sys

import pytest
from cli import assert_refused, run_script

from mindspore_accum.run.lock import RunInUseError, run_lock

#: A process that holds train.py's run lock on argv[1] until killed: it says "locked" once it has it.
HOLDER = ("import os, sys, time\nfrom mindspore_accum.run.lock import run_lock\n"
          "os.makedirs(os.path.dirname(sys.argv[1]), exist_ok=True)\n"
          "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)")


def test_a_second_run_on_the_same_checkpoint_is_refused_and_a_killed_run_leaves_no_lock(tmp_path, tiny_mnist):
    """The first run is a process that takes the lock and blocks: no timing, no race with its training."""
    flags = ("--data_path", tiny_mnist, "--batch_size", 8, "--no_progress", "--ckpt_path", "runs/m.ckpt")
    first = subprocess.Popen([sys.executable, "-c", HOLDER, "runs/m.ckpt"], cwd=tmp_path, stdout=subprocess.PIPE,
                             text=True)
    try:
        assert first.stdout.readline() == "locked\n"
        second = run_script("train.py", *flags, "--epochs", 1, "--seed", 2, cwd=tmp_path)
        assert_refused(second, "'runs/m.ckpt' is in use by another run", f"(process {first.pid})")
        assert first.poll() is None, "the refused run disturbed the first"
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    third = run_script("train.py", *flags, "--epochs", 1, cwd=tmp_path)
    assert third.returncode == 0, third.stderr


def test_the_lock_is_reentrant_in_one_process_and_refuses_another(tmp_path):
    path = tmp_path / "m.ckpt"
    probe = ("import sys; from mindspore_accum.run.lock import run_lock\n"
             "try:\n    run_lock(sys.argv[1]).__enter__()\nexcept Exception as error:\n    sys.exit(str(error))")
    with run_lock(path):
        with run_lock(path):  # train.py holds it, and the driver takes it again
            pass
        other = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
        assert f"is in use by another run (process {os.getpid()})" in other.stderr
    other = subprocess.run([sys.executable, "-c", probe, str(path)], capture_output=True, text=True)
    assert other.returncode == 0, other.stderr  # released at the end of the outer block
    assert issubclass(RunInUseError, ValueError)  # the scripts turn it into one line and exit status 2


@pytest.mark.parametrize("name", ["m.ckpt", "m_state"])
def test_lock_files_sit_beside_what_they_guard(tmp_path, name):
    from mindspore_accum.run.lock import lock_path_for
    assert lock_path_for(tmp_path / name) == str(tmp_path / f".{name}.lock")
    assert lock_path_for(str(tmp_path / name) + os.sep) == str(tmp_path / f".{name}.lock")


def test_a_run_that_ends_deletes_its_lock_file(tmp_path):
    from mindspore_accum.run.lock import lock_path_for
    with run_lock(tmp_path / "m.ckpt"):
        assert os.path.exists(lock_path_for(tmp_path / "m.ckpt"))
    assert os.listdir(tmp_path) == []
