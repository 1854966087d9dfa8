"""The ``nsactor`` command line.

Each top-level command is added by a function ``add_<command>(sub)`` that
registers an argparse sub-parser and sets ``func`` (a callable taking the
parsed Namespace and returning an exit status) as its default. To add a
command (``doctor``, ``run``, ``bench``, ``selftest``...), write such a
function and append it to :data:`COMMANDS`; keep heavy imports (trio, the
runtime) inside the command's ``func`` so that ``nsactor policy ...`` stays
cheap.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import _policy

# --------------------------------------------------------------------------
# nsactor policy {list,show,check}
# --------------------------------------------------------------------------


def _policy_list(args: argparse.Namespace) -> int:
    shipped = _policy.shipped_policies()
    if not shipped:
        print(f"no policies in {_policy.shipped_policy_dir()}", file=sys.stderr)
        return 1
    rows = []
    status = 0
    for name, path in shipped.items():
        try:
            desc = _policy.load_policy(path).description
        except _policy.PolicyError as e:
            desc = f"INVALID: {e.detail}"
            status = 1
        rows.append((name, str(path), desc))
    wn = max(len("NAME"), *(len(r[0]) for r in rows))
    wp = max(len("PATH"), *(len(r[1]) for r in rows))
    print(f"{'NAME':<{wn}}  {'PATH':<{wp}}  DESCRIPTION")
    for name, path, desc in rows:
        print(f"{name:<{wn}}  {path:<{wp}}  {desc}".rstrip())
    return status


def _policy_show(args: argparse.Namespace) -> int:
    try:
        policy = _policy.load_policy(args.policy)
    except _policy.PolicyError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    header = (
        f"Policy {policy.name!r} resolved from {args.policy!r}, every default filled in.\n"
        "Limits that are absent are inherited from the parent process."
    )
    sys.stdout.write(_policy.policy_to_toml(policy, header=header))
    return 0


def _policy_check(args: argparse.Namespace) -> int:
    status = 0
    for path in args.paths:
        try:
            _policy.load_policy(path)
        except _policy.PolicyError as e:
            print(f"error: {e}", file=sys.stderr)
            status = 1
        else:
            print(f"ok {path}")
    return status


def add_policy(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "policy",
        help="list, show and check sandbox policies",
        description="List, show and check sandbox policy files (see docs/policy.md).",
    )
    psub = p.add_subparsers(dest="policy_command", required=True, metavar="{list,show,check}")

    pl = psub.add_parser("list", help="list the shipped policies")
    pl.set_defaults(func=_policy_list)

    ps = psub.add_parser("show", help="print a policy as TOML with every default filled in")
    ps.add_argument("policy", metavar="NAME|PATH", help="a shipped policy name or a .toml file")
    ps.set_defaults(func=_policy_show)

    pc = psub.add_parser("check", help="validate policy files")
    pc.add_argument("paths", metavar="PATH", nargs="+", help="policy .toml files (or shipped names)")
    pc.set_defaults(func=_policy_check)


# --------------------------------------------------------------------------
# nsactor doctor / nsactor run (implemented in _doctor.py / _run.py)
# --------------------------------------------------------------------------


def add_doctor(sub: argparse._SubParsersAction) -> None:
    from ._doctor import add_doctor as add

    add(sub)


def add_run(sub: argparse._SubParsersAction) -> None:
    from ._run import add_run as add

    add(sub)


def add_bench(sub: argparse._SubParsersAction) -> None:
    from ._bench import add_bench as add

    add(sub)


def add_selftest(sub: argparse._SubParsersAction) -> None:
    from ._selftest import add_selftest as add

    add(sub)


# --------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------

#: Functions that each add one top-level command to the sub-parsers.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_policy, add_doctor, add_run, add_bench,
                                                                 add_selftest]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nsactor",
        description="Sandboxed trio actors on Linux.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `nsactor policy show x | head`
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
