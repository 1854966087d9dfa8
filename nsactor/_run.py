"""``nsactor run``: run one function, or a script file, in a sandboxed actor.

::

    nsactor run [--policy P] [--interpreter subint|main] pkg.mod:func [key=value ...]
    nsactor run [--policy P] [--interpreter subint|main] script.py [args ...]

The function form prints the result as JSON on stdout. The script form binds
the file read-only into the sandbox, runs it there as ``__main__`` (its
stdout/stderr are relayed to ours) and exits with its exit status. Both use
the ``ns_forkserver`` start method, and the ``untrusted`` policy by default.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

DEFAULT_POLICY = "untrusted"
START_METHOD = "ns_forkserver"
#: exit status after Ctrl-C, as a shell reports a SIGINT death
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad command-line arguments (exit status 2)."""


def is_script(target: str) -> bool:
    """A ``.py`` file or any existing file is a script; otherwise a ``module:function``."""
    return target.endswith(".py") or os.path.isfile(target)


def parse_kwargs(items: list[str]) -> dict[str, Any]:
    """``key=value`` arguments -> kwargs; a value is JSON if it parses as JSON, else a string."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"expected a keyword argument like key=value, got {item!r}")
        if key in kwargs:
            raise UsageError(f"keyword argument {key!r} given twice")
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    return kwargs


def _resolve_policy(name: str, interpreter: str | None) -> Any:
    import msgspec

    from ._policy import load_policy

    policy = load_policy(name)
    if interpreter is not None and interpreter != policy.interpreter:
        policy = msgspec.structs.replace(policy, interpreter=interpreter)
    return policy


def policy_with_script(policy: Any, path: str) -> Any:
    """``policy`` with ``path`` bound read-only at the same place (when the sandbox has its own root)."""
    import msgspec

    from ._policy import Bind

    fs = policy.fs
    if fs.root != "tmpfs":
        return policy  # the host's filesystem: the script is already visible
    norm = os.path.normpath(path)
    if any(os.path.normpath(b.target) == norm for b in (*fs.ro, *fs.rw)):
        return policy  # the policy already mounts it
    return msgspec.structs.replace(policy, fs=msgspec.structs.replace(fs, ro=(*fs.ro, Bind(src=path))))


async def _call(policy: Any, func: str, kwargs: dict[str, Any], enable: list[str]) -> Any:
    """Run under ``restrict_keyboard_interrupt_to_checkpoints``: Ctrl-C then
    reaches only this (the main) task. By default trio raises it in whichever
    task runs, which may be the one supervising the actor; its exit then goes
    unnoticed and the teardown waits out grace + 5 s before giving up."""
    from . import open_nursery

    async with open_nursery(start_method=START_METHOD) as an:
        portal = await an.start_actor("nsactor-run", enable_modules=enable, policy=policy)
        return await portal.run(func, **kwargs)


def _run_function(args: argparse.Namespace) -> int:
    import msgspec
    import trio

    func = args.target
    module, _, qualname = func.partition(":")
    if not module or not qualname:
        raise UsageError(f"expected a function reference like 'package.module:function', got {func!r}")
    kwargs = parse_kwargs(args.args)
    policy = _resolve_policy(args.policy, args.interpreter)
    result = trio.run(_call, policy, func, kwargs, [module], restrict_keyboard_interrupt_to_checkpoints=True)
    try:
        encoded = msgspec.json.encode(result)
    except (TypeError, msgspec.EncodeError) as exc:
        print(f"nsactor run: the result cannot be encoded as JSON: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(encoded.decode() + "\n")
    sys.stdout.flush()
    return 0


def _run_script(args: argparse.Namespace) -> int:
    import trio

    path = os.path.abspath(args.target)
    if not os.path.isfile(path):
        raise UsageError(f"no such script file: {args.target!r}")
    if not os.access(path, os.R_OK):
        raise UsageError(f"cannot read script file: {args.target!r}")
    policy = policy_with_script(_resolve_policy(args.policy, args.interpreter), path)
    sys.stdout.flush()
    code = trio.run(_call, policy, "nsactor._runscript:run_script",
                    {"path": path, "argv": [path, *args.args]}, ["nsactor._runscript"],
                    restrict_keyboard_interrupt_to_checkpoints=True)
    return int(code)


def run_command(args: argparse.Namespace) -> int:
    from ._errors import NsactorError
    from ._policy import PolicyError

    # Like `python -m`: modules in the current directory are importable.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        if is_script(args.target):
            return _run_script(args)
        if ":" in args.target:
            return _run_function(args)
        raise UsageError(f"{args.target!r} is neither a script file (.py) nor a 'package.module:function'")
    except UsageError as exc:
        args.parser.print_usage(sys.stderr)
        print(f"nsactor run: error: {exc}", file=sys.stderr)
        return 2
    except (NsactorError, PolicyError) as exc:
        print(f"nsactor run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("nsactor run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BaseExceptionGroup as group:
        # trio raises Ctrl-C in whichever task runs: inside a nursery it comes
        # out wrapped in a group (seen under load, e.g. the distro legs).
        if group.split(KeyboardInterrupt)[1] is not None:
            raise
        print("nsactor run: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def add_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run",
        help="run a function or a script in a sandboxed actor",
        description=(
            "Run pkg.mod:func [key=value ...] in a sandboxed actor and print its result as JSON "
            "(values are JSON when they parse as JSON, else strings), or run script.py [args ...] "
            "inside the sandbox (the file is bound read-only) and exit with its exit status. "
            "The current directory is on sys.path, as with `python -m`."
        ),
    )
    p.add_argument("--policy", "-p", default=DEFAULT_POLICY, metavar="NAME|PATH",
                   help=f"sandbox policy: a shipped name or a .toml file (default: {DEFAULT_POLICY})")
    p.add_argument("--interpreter", choices=("subint", "main"), default=None,
                   help="run the actor in a subinterpreter or the main interpreter (default: the policy's)")
    p.add_argument("target", metavar="pkg.mod:func|script.py", help="a function reference or a script file")
    p.add_argument("args", nargs=argparse.REMAINDER, metavar="ARG",
                   help="key=value keyword arguments (function) or sys.argv[1:] (script)")
    p.set_defaults(func=run_command, parser=p)
