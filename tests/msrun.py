"""Launching two CPU ranks under msrun on a free loopback port, and always cleaning up."""

import os
import signal
import socket
import subprocess
import sys
import time

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
    options = [f"--worker_num={ranks}", f"--local_worker_num={ranks}", f"--master_port={free_port()}",
               f"--log_dir={log_dir}"]
    (status,) = _finish([_start(options, script, args, cwd)], timeout)
    return status, _logs(log_dir, range(ranks))


def run_msrun_and_signal(script, *args, log_dir, cwd, ready, signum, ranks=2, timeout=300):
    """As :func:`run_msrun`, but sends ``signum`` to msrun once ``ready()`` is true, as ``kill`` or a scheduler does.

    Returns (exit status, {rank: worker log text}, seconds from the signal
    until neither msrun nor any process it started is left).
    """
    options = [f"--worker_num={ranks}", f"--local_worker_num={ranks}", f"--master_port={free_port()}",
               f"--log_dir={log_dir}"]
    process = _start(options, script, args, cwd)
    started = []
    try:
        deadline = time.monotonic() + timeout
        while not ready() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        # The scheduler and the workers, each worker in a process group of its own (not msrun's `tail -f`s).
        started = _children(process.pid, running=script)
        sent = time.monotonic()
        process.send_signal(signum)
        while any(_alive(pid) for pid in started) and time.monotonic() < sent + timeout:
            time.sleep(0.1)
        seconds = time.monotonic() - sent
    finally:
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        try:  # msrun's `tail -f`s outlive a SIGTERM and hold its output open
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        (status,) = _finish([process], timeout)
    return status, _logs(log_dir, range(ranks)), seconds


def _children(parent, running):
    """The process ids whose parent is ``parent`` and whose command line holds ``running``, from /proc."""
    children = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                command = cmdline.read().decode(errors="replace")
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent and running in command:
            children.append(int(entry))
    return children


def _alive(pid):
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def run_two_nodes(script, args0, args1, log_dir, cwd, timeout=300):
    """Two "nodes" on 127.0.0.1: two msrun launches of one worker each (node_rank 0 and 1), args of their own.

    msrun starts a scheduler wherever the master address is local, which on one
    host is both launches. Node 0 starts first and its scheduler takes the
    port; node 1's own scheduler then fails at once and that launch exits 1,
    while its worker joins node 0's scheduler and runs to the end. (On real
    nodes only the master's address is local.) Returns ([exit status of each
    launch], {rank: worker log text}).
    """
    port = free_port()
    processes = []
    try:
        for node, args in enumerate((args0, args1)):
            options = ["--worker_num=2", "--local_worker_num=1", f"--node_rank={node}", "--master_addr=127.0.0.1",
                       f"--master_port={port}", f"--log_dir={log_dir}/node{node}"]
            processes.append(_start(options, script, args, cwd))
            if node == 0:
                _wait_for_port(port, timeout=60)
    finally:
        statuses = _finish(processes, timeout)
    return statuses, {**_logs(f"{log_dir}/node0", [0]), **_logs(f"{log_dir}/node1", [1])}


def _start(options, script, args, cwd):
    env = dict(os.environ, GLOG_v="3", PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    return subprocess.Popen([MSRUN, *options, "--join=True", "--cluster_time_out=120", script, *map(str, args)],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_for_port(port, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"msrun's scheduler did not listen on port {port} within {timeout} s")


def _finish(processes, timeout):
    try:
        for process in processes:
            process.communicate(timeout=timeout)
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    return [process.returncode for process in processes]


def _logs(log_dir, ranks):
    logs = {}
    for rank in ranks:
        path = os.path.join(log_dir, f"worker_{rank}.log")
        logs[rank] = open(path, encoding="utf-8", errors="replace").read() if os.path.exists(path) else ""
    return logs


def own_lines(log):
    """A worker log without MindSpore's own [WARNING]/[INFO]/[ERROR] lines."""
    return [line for line in log.splitlines() if line and not line.startswith(("[WARNING]", "[INFO]", "[ERROR]"))]
