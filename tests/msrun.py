"""Launching two CPU ranks under msrun on a free loopback port, and always cleaning up."""

import os
import signal
import socket
import subprocess
import sys

MSRUN = os.path.join(os.path.dirname(sys.executable), "msrun")


def free_port():
    """A port nobody listens on now (the scheduler binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_msrun(script, *args, log_dir, cwd, ranks=2, timeout=300):
    """``msrun --worker_num=ranks ... script args``; returns (exit status, {rank: worker log text}).

    msrun and its workers run in a session of their own, which is killed
    whatever happens - a failing or hanging test leaves no worker behind.
    """
    env = dict(os.environ, GLOG_v="3", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    command = [MSRUN, f"--worker_num={ranks}", f"--local_worker_num={ranks}", f"--master_port={free_port()}",
               f"--log_dir={log_dir}", "--join=True", "--cluster_time_out=120", script, *map(str, args)]
    launcher = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    try:
        launcher.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(launcher.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        launcher.wait()
    logs = {}
    for rank in range(ranks):
        path = os.path.join(log_dir, f"worker_{rank}.log")
        logs[rank] = open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""
    return launcher.returncode, logs


def own_lines(log):
    """A worker log without MindSpore's own [WARNING]/[INFO]/[ERROR] lines."""
    return [line for line in log.splitlines() if line and not line.startswith(("[WARNING]", "[INFO]", "[ERROR]"))]
