"""Running scripts/*.py as a user does, and what a refusal must look like."""

import contextlib
import importlib.util
import io
import os
import subprocess
import sys

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts")


def parse_in_process(name, *args):
    """``scripts/<name>``'s ``parse_args(args)`` in this process (no MindSpore start-up); returns (exit, stderr).

    For argparse's own refusals, which never reach MindSpore: a subprocess
    per flag cost seconds each.
    """
    spec = importlib.util.spec_from_file_location(f"script_{name[:-3]}", os.path.join(SCRIPTS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            module.parse_args([str(arg) for arg in args])
        except SystemExit as stopped:
            return subprocess.CompletedProcess(name, stopped.code, "", stderr.getvalue())
    return subprocess.CompletedProcess(name, 0, "", stderr.getvalue())


def run_script(name, *args, cwd, timeout=600):
    env = dict(os.environ, GLOG_v="3")
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_refused(result, *fragments):
    """Exit 2, no traceback, and one line on stderr that names what was wrong (MindSpore's own log lines aside)."""
    assert result.returncode == 2, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1 and "error:" in lines[-1], result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
