"""Pools of pre-warmed actor processes (``ActorNursery.prewarm``).

A cold subinterpreter actor spends ~200 ms importing trio and msgspec
afresh; everything up to the actor's Hello (namespaces, mounts, network,
privilege drops, the subinterpreter, the runtime's imports, the connection
to the root) depends only on the policy and the module binds, so a pool does
it ahead of time. A spawn then costs a SpawnSpec, the import of its own
modules and a Ready.

Rules: a warm process serves exactly one actor (never recycled); one that
dies in the pool is discarded and replaced, never handed out; refills run
in the background, started after the spawn that took a process has its
actor; a pool whose boot fails stops refilling and keeps the error (a cold
spawn then reports it in full); the pool ends with its nursery.
"""
from __future__ import annotations

import collections
import os
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import trio

if TYPE_CHECKING:
    from ._nursery import _Booted

#: boots in flight per pool: more than the cores only slows each of them down
MAX_PARALLEL_BOOTS = max(1, os.cpu_count() or 1)
#: a refill waits this long after a spawn that took a process: a boot is
#: ~200 ms of CPU, and the new actor's first calls should not compete with it
REFILL_DELAY = 0.05


class WarmPool:
    """Booted processes for one spawn configuration, kept at ``size`` (internal)."""

    def __init__(self, boot: Callable[[str], Awaitable[_Booted]], size: int, label: str) -> None:
        self._boot = boot
        self.size = size
        self.label = label
        self._ready: collections.deque[_Booted] = collections.deque()
        self._watchers: dict[int, trio.CancelScope] = {}
        self._booting = 0
        self._booted = 0
        self._changed = trio.Event()
        self._scope = trio.CancelScope()
        self._done = trio.Event()
        self._hold_refill = 0
        self._refill_at = 0.0
        self._waiters = 0
        self.error: BaseException | None = None
        #: counters, for tests and the bench
        self.taken = 0
        self.replaced = 0

    # -- state -------------------------------------------------------------------
    @property
    def ready(self) -> int:
        return len(self._ready)

    def _pulse(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def resize(self, size: int) -> None:
        self.size = size
        while len(self._ready) > size:
            booted = self._ready.pop()
            self._watchers.pop(id(booted)).cancel()
            await booted.discard()
        self._pulse()

    def refill(self) -> None:
        """A spawn that took a process has its actor: boot replacements soon."""
        self._hold_refill = max(0, self._hold_refill - 1)
        self._refill_at = trio.current_time() + REFILL_DELAY
        self._pulse()

    def _wanted(self) -> bool:
        return (self.error is None and len(self._ready) + self._booting < self.size
                and self._booting < MAX_PARALLEL_BOOTS)

    # -- tasks -------------------------------------------------------------------
    @trio.lowlevel.enable_ki_protection  # Ctrl-C goes to the main task (see ActorRef.supervise)
    async def run(self, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Keep ``size`` processes booted (or booting) until ``aclose``."""
        try:
            with self._scope:
                async with trio.open_nursery() as n:
                    task_status.started()
                    while True:
                        if self._wanted() and (self._waiters or not self._hold_refill):
                            if self._waiters or trio.current_time() >= self._refill_at:
                                while self._wanted():
                                    self._booting += 1
                                    self._booted += 1
                                    n.start_soon(self._fill_one, n, f"{self.label}-{self._booted}")
                            else:  # only the delay after a spawn holds it back
                                with trio.move_on_at(self._refill_at):
                                    await self._changed.wait()
                                continue
                        await self._changed.wait()
        finally:
            self._done.set()

    @trio.lowlevel.enable_ki_protection
    async def _fill_one(self, n: trio.Nursery, name: str) -> None:
        try:
            booted = await self._boot(name)
        except Exception as exc:
            self.error = exc
        else:
            self._ready.append(booted)
            self._watchers[id(booted)] = scope = trio.CancelScope()
            n.start_soon(self._watch, booted, scope)
        finally:
            self._booting -= 1
            self._pulse()

    @trio.lowlevel.enable_ki_protection
    async def _watch(self, booted: _Booted, scope: trio.CancelScope) -> None:
        """Discard (and so replace) a process that dies while it waits in the pool."""
        with scope:
            await booted.ref.exited.wait()
        if scope.cancelled_caught:
            return  # taken, or the pool is closing
        self._watchers.pop(id(booted), None)
        try:
            self._ready.remove(booted)
        except ValueError:
            return
        self.replaced += 1
        await booted.discard()
        self._pulse()

    # -- the spawn side -----------------------------------------------------------
    async def take(self) -> _Booted | None:
        """A live booted process, waiting for one in flight if need be; None if the pool cannot give one."""
        while True:
            while self._ready:
                booted = self._ready.popleft()
                self._watchers.pop(id(booted)).cancel()
                if booted.alive():
                    self.taken += 1
                    self._hold_refill += 1  # released by refill() once the spawn is done
                    return booted
                self.replaced += 1
                await booted.discard()
                self._pulse()
            if self.error is not None or self._done.is_set() or self.size == 0:
                return None
            # Empty: waiting for the pool's next boot beats a cold spawn
            # competing with it; boot now, whatever holds the refill back.
            self._waiters += 1
            self._pulse()
            try:
                await self._changed.wait()
            finally:
                self._waiters -= 1

    async def wait_full(self) -> None:
        """Until ``size`` processes are ready; raises the error that stopped the pool."""
        while len(self._ready) < self.size:
            if self.error is not None:
                raise self.error
            await self._changed.wait()

    async def aclose(self) -> None:
        """Stop refilling and kill every process still in the pool."""
        with trio.CancelScope(shield=True):
            self._scope.cancel()
            await self._done.wait()
            while self._ready:
                await self._ready.popleft().discard()
            self._watchers.clear()
