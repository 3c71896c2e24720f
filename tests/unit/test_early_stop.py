"""A stop signal during start-up (collector/early_stop.py): the daemon exits cleanly having started nothing; any other
command stops as it would have without the hold. Real processes: the signal dispositions are process-wide."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

from tests.conftest import ROOT
from tests.harness import until_catches


def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COLLECTOR_") and k != "MONGODB_URI"}


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def daemon(*extra: str) -> subprocess.Popen:
    """A daemon pointed at a closed port: left alone, it fails to connect (exit 3)."""
    return subprocess.Popen([sys.executable, "-m", "collector", "--mode", "normal", "--env", "test",
                             "--mongodb-uri", f"mongodb://127.0.0.1:{closed_port()}/", *extra],
                            cwd=ROOT, env=env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def test_sigterm_while_the_daemon_imports_is_a_clean_stop():
    proc = daemon()
    assert until_catches(proc.pid, signal.SIGTERM, 30.0), "the entry point never installed its handler"
    proc.send_signal(signal.SIGTERM)  # within the imports (hundreds of ms): long before any database call
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (proc.returncode, err[-2000:])
    assert "stop requested while starting" in err


def test_sigint_while_the_daemon_imports_is_a_clean_stop_too():
    proc = daemon()
    # Python catches SIGINT from its own start (KeyboardInterrupt): SIGTERM caught says the hold is in
    assert until_catches(proc.pid, signal.SIGTERM, 30.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (proc.returncode, err[-2000:])
    assert "stop requested while starting" in err


def test_left_alone_the_same_daemon_fails_to_connect():
    """The control: without the signal the daemon above goes on to the database and reports it missing."""
    proc = daemon("--set", "database.timeout=1")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 3, (proc.returncode, err[-2000:])


def python(*lines: str) -> subprocess.CompletedProcess:
    """These lines run by a Python process of their own, its output captured."""
    return subprocess.run([sys.executable, "-c", "\n".join(lines)], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=60)


def test_another_command_gets_a_held_signal_delivered_and_stops_as_it_would_have():
    """Held during the imports, then `release()` (what every command but the daemon calls first): the default
    action, death by SIGTERM."""
    done = python("import os, signal",
                  "from collector import early_stop",
                  "early_stop.hold()",
                  "os.kill(os.getpid(), signal.SIGTERM)",
                  "print('held', list(early_stop.held), flush=True)",
                  "early_stop.release()",
                  "print('not reached', flush=True)")
    assert done.returncode == -signal.SIGTERM, (done.returncode, done.stderr)
    assert done.stdout == f"held [{int(signal.SIGTERM)}]\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # this process: untouched by the module's import


def test_a_subcommand_restores_the_default_behaviour():
    """SIGTERM kills, SIGINT raises KeyboardInterrupt, as in any Python program."""
    done = python("import signal",
                  "from collector import early_stop",
                  "early_stop.hold()",
                  "from collector.cli import main",
                  "try:",
                  "    main(['connectors'], prog_name='collector', standalone_mode=False)",
                  "finally:",
                  "    print('SIGTERM', signal.getsignal(signal.SIGTERM), 'SIGINT',",
                  "          signal.getsignal(signal.SIGINT).__name__)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.endswith("SIGTERM 0 SIGINT default_int_handler\n"), done.stdout[-300:]  # SIG_DFL is 0
