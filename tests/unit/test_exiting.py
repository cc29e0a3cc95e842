"""The bound on a process's exit (policyflow.exiting), in child processes: one whose at-exit drain
never ends, as Prefect's once did after a stopped watch, and one that ends in time."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.specs import ROOT


def child(body: str) -> subprocess.CompletedProcess[str]:
    code = "import threading, sys\nfrom policyflow.exiting import exit_within\n" + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)


def test_a_drain_that_never_ends_at_exit_ends_with_the_code_given() -> None:
    done = child("""
        threading._register_atexit(threading.Event().wait)  # registered as Prefect registers its drains
        exit_within(0.5, 143)
        print("stopped", flush=True)
    """)
    assert (done.returncode, done.stdout) == (143, "stopped\n")


def test_a_process_that_ends_in_time_keeps_its_own_exit_code() -> None:
    done = child("""
        exit_within(30, 143)
        sys.exit(3)
    """)
    assert done.returncode == 3
