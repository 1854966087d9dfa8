"""What ``nsactor bench`` runs inside its actors.

Kept tiny and free of imports on purpose: the actor imports this module at
every measured spawn (from source, where no .pyc was written), so the bench
measures the spawn, not the compilation of the bench harness (``_bench``).
"""


def ping() -> str:
    return "pong"


def echo(value: object) -> object:
    return value


async def stream(n: int, size: int):  # type: ignore[no-untyped-def]
    """Yield ``n`` bytes objects of ``size`` bytes each."""
    item = b"x" * size
    for _ in range(n):
        yield item
