"""The ``conformance`` command and ``python -m conformance``. A run that will fork worker
processes starts their fork server first, before torch is imported here, so that the server's
imports and this process's run at once (:mod:`conformance.running.workers`); then
:func:`conformance.cli.main` takes over. The command ends as soon as its work is done
(:func:`command`, the console script)."""

from __future__ import annotations

import atexit
import os
import sys
from typing import NoReturn, Sequence

__all__ = ["command", "main"]

_SERIAL_OPTIONS = {("--jobs", "1"), ("--executor", "serial"), ("--executor", "ray")}


def _will_fork_workers(argv: Sequence[str]) -> bool:
    """Whether ``argv`` is likely a ``conformance run`` in worker processes, judged before the
    options are parsed: a wrong guess costs an idle fork server, or the seconds this saves."""
    if not argv or argv[0] != "run" or (os.cpu_count() or 1) < 2 or {"-h", "--help"} & set(argv):
        return False
    pairs = {tuple(arg.split("=", 1)) for arg in argv if "=" in arg} | set(zip(argv, argv[1:]))
    if pairs & _SERIAL_OPTIONS or any(name == "--device" and value.startswith("cuda") for name, value in pairs):
        return False
    return argv.count("--model") != 1 or any(name == "--jobs" or (name, value) == ("--executor", "processes") for name, value in pairs)


def main(argv: Sequence[str] | None = None) -> int:
    """The command: the early fork server where a run will fork workers, then :func:`conformance.cli.main`."""
    if _will_fork_workers(sys.argv[1:] if argv is None else argv):
        from conformance.running.workers import start_worker_server

        start_worker_server()
    from conformance.cli import main as cli_main

    return cli_main(argv)


def command() -> NoReturn:
    """The console script: :func:`main`, then the exit without the interpreter's teardown.

    Every file the command writes is closed by then; the exit handlers run (the worker
    processes' shutdown among them) and the standard streams are flushed, as at a normal exit.
    What is skipped is the freeing of every module and object one by one, which took about
    1.5 s after a run, with torch, torchvision and timm loaded."""
    code = main()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be said there
            pass
    os._exit(code)


if __name__ == "__main__":  # python -m conformance: the interpreter's own exit, which profilers and tracers wait for
    sys.exit(main())
