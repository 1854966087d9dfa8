"""Helpers that ``nsactor run`` and ``nsactor doctor`` call *inside* an actor.

Kept tiny and free of heavy imports: it is imported in the sandbox (in the
main interpreter or a subinterpreter) as an enabled module.
"""
from __future__ import annotations

import os
import runpy
import socket
import sys
import traceback
from typing import Any


def ping() -> dict[str, Any]:
    """A trivial call for ``nsactor doctor``'s end-to-end check."""
    return {"pid": os.getpid(), "uid": os.getuid(), "hostname": socket.gethostname()}


def _exit_code(code: Any) -> int:
    """The process exit status ``sys.exit(code)`` would give."""
    if code is None:
        return 0
    if isinstance(code, int) and not isinstance(code, bool):
        return code & 0xFF
    if isinstance(code, bool):
        return int(code)
    print(code, file=sys.stderr)
    return 1


def _print_script_traceback(exc: BaseException, path: str) -> None:
    """Print the traceback as ``python script.py`` would: from the script's frame on."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb if tb is not None else exc.__traceback__, file=sys.stderr)


def _run(path: str, argv: list[str]) -> int:
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = list(argv)
    sys.path.insert(0, os.path.dirname(path))  # as `python script.py` does
    for stream in (sys.stdout, sys.stderr):
        try:  # the output is relayed to a terminal, probably: show it as it comes
            stream.reconfigure(line_buffering=True)
        except (AttributeError, OSError, ValueError):
            pass
    try:
        runpy.run_path(path, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException as exc:  # noqa: BLE001 - the script's failure is its exit status
        _print_script_traceback(exc, path)
        code = 1
    finally:
        sys.argv = saved_argv
        sys.path[:] = saved_path
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
    return code


async def run_script(path: str, argv: list[str]) -> int:
    """Run the file ``path`` as ``__main__`` with ``sys.argv = argv``; return its exit status.

    It runs in a worker thread, so that the actor stays responsive (a
    CancelActor ends it at once, even while the script blocks) and so that
    the script may itself call ``trio.run``. Like under ``python script.py``,
    ``SystemExit`` gives the status, and an uncaught exception prints its
    traceback to stderr and gives 1.
    """
    import trio

    return await trio.to_thread.run_sync(_run, path, argv, abandon_on_cancel=True)
