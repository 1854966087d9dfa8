"""``nsactor bench``: spawn latency, RPC, scale and teardown, in one process tree.

The actors run functions of ``nsactor._bench_actor`` (a tiny module, bound
into the sandbox with the nsactor package): importing it is part of every
measured spawn, so it must not drag this harness along. Module-level imports
here stay in the standard library; nsactor, trio and msgspec are imported
inside the functions that need them.

Method (docs/benchmarks.md has the long form):

* every latency series is preceded by one warm-up spawn/call of the same kind,
  which is not counted (the first spawn also starts the forkserver);
* spawn series of the different configurations are *interleaved* (one spawn
  of each, round after round), so load from elsewhere on the host hits them
  all alike; ratios are of p50s from the same run;
* a spawn is ``start_actor`` -> first ``portal.run`` result; the external
  baselines are a process that runs ``import trio, msgspec`` and exits.
"""
from __future__ import annotations

import os
import sys
import time

# ---------------------------------------------------------------------------
# The bench (parent side)
# ---------------------------------------------------------------------------

#: what the actors import and run (tiny: importing it is part of every measured spawn)
ACTOR_MODULE = "nsactor._bench_actor"
IMPORT_LINE = "import trio, msgspec"

#: goals the report checks: key -> (result name, metric, field, op, target, text)
GOALS = [
    ("spawn_ns_main_untrusted_p50", "ns_main_untrusted", "spawn", "p50", "<=", 15.0,
     "ns_forkserver, interpreter main, untrusted: spawn p50 <= 15 ms"),
    ("rpc_round_trip_p50", "ns_main_untrusted", "rpc_round_trip", "p50", "<=", 100.0,
     "trivial RPC round trip p50 <= 100 us"),
    ("rpc_calls_16", "ns_main_untrusted", "rpc_calls_16_callers", "p50", ">=", 20000.0,
     ">= 20k calls/s with 16 concurrent callers"),
    ("pss_per_actor", "scale_256", "pss_per_actor", "mean", "<=", 15.0,
     "PSS per actor (actor + relay, main interpreter, K=256) <= 15 MB"),
    ("spawn_prewarm_subint_untrusted_p50", "prewarm_subint_untrusted", "spawn", "p50", "<=", 5.0,
     "prewarmed, interpreter subint, untrusted: spawn p50 <= 5 ms"),
]


class _Opts:
    def __init__(self, quick: bool) -> None:
        self.quick = quick
        self.spawn_n = 3 if quick else 20
        self.rtt_n = 50 if quick else 3000
        self.calls_total = 200 if quick else 4000
        self.trials = 2 if quick else 5
        self.stream_small_n = 500 if quick else 20000
        self.stream_big_n = 20 if quick else 1000
        self.scale_ks = (1, 8) if quick else (1, 8, 64, 256)
        self.burst_pool, self.burst_n = (2, 8) if quick else (8, 64)


def _quantile(sorted_xs: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list."""
    import math

    k = max(1, math.ceil(q * len(sorted_xs)))
    return sorted_xs[min(k, len(sorted_xs)) - 1]


def summarize(name: str, metric: str, unit: str, values: list[float], **extra: object) -> dict:
    xs = sorted(values)
    n = len(xs)
    mid = n // 2
    p50 = xs[mid] if n % 2 else (xs[mid - 1] + xs[mid]) / 2
    row = {"name": name, "metric": metric, "unit": unit, "p50": p50, "p90": _quantile(xs, 0.9),
           "max": xs[-1], "n": n, "p99": _quantile(xs, 0.99), "mean": sum(xs) / n}
    row.update(extra)
    return row


# -- /proc helpers ----------------------------------------------------------------

def _proc_kib(path: str, key: str) -> int | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def pss_kib(pid: int) -> int | None:
    return _proc_kib(f"/proc/{pid}/smaps_rollup", "Pss")


def reset_peak_rss() -> bool:
    """Reset this process's VmHWM (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child_pids(parent: int) -> set[int]:
    """Live (non-zombie) processes whose parent is ``parent``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == parent:
            found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _mem_available_kib() -> int | None:
    return _proc_kib("/proc/meminfo", "MemAvailable")


def host_info() -> dict:
    import datetime
    import platform
    from importlib import metadata

    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None

    cpu = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_total_mib": (_proc_kib("/proc/meminfo", "MemTotal") or 0) // 1024,
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "uid": os.geteuid(),
        "nsactor": version("nsactor"),
        "trio": version("trio"),
        "msgspec": version("msgspec"),
    }


# -- external baselines --------------------------------------------------------------

def _bwrap_cmd(bwrap: str) -> list[str]:
    """bwrap with roughly our untrusted sandbox: all namespaces, ro Python, /proc, /dev, /tmp."""
    from .sandbox.mounts import python_bind_sources

    cmd = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
           "--setenv", "PATH", "/usr/bin:/bin",
           # First: bwrap mounts in order, and a venv under /tmp must be bound over the tmpfs.
           "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for d in ("/usr", "/lib", "/lib64", "/bin", "/etc"):
        if os.path.islink(d):
            cmd += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            cmd += ["--ro-bind", d, d]
    for d in python_bind_sources():
        if not any(d == p or d.startswith(p + "/") for p in ("/usr", "/lib", "/lib64", "/bin", "/etc")):
            cmd += ["--ro-bind", d, d]
    cmd += ["--"]
    return cmd


def external_baselines() -> tuple[dict[str, list[str]], list[str]]:
    """name -> argv of each external baseline available here, and notes on the absent ones."""
    import shutil

    py = [sys.executable, "-c", IMPORT_LINE]
    cmds = {"bare_python": py}
    notes = []
    unshare = shutil.which("unshare")
    if unshare:
        cmds["unshare"] = [unshare, "-Urmnp", "--fork", *py]
    else:
        notes.append("unshare(1) not found: the unshare baseline is skipped")
    bwrap = shutil.which("bwrap")
    if bwrap:
        cmds["bwrap"] = _bwrap_cmd(bwrap) + py
    else:
        notes.append("bwrap not found (apt-get install bubblewrap): the bwrap baseline is skipped")
    return cmds, notes


# -- measurements -------------------------------------------------------------------------

async def _run_external(argv: list[str]) -> float:
    import subprocess

    import trio

    t0 = time.perf_counter()
    proc = await trio.run_process(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  capture_stderr=True, check=False)
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"exit status {proc.returncode}: {proc.stderr.decode(errors='replace').strip()[-500:]}")
    return dt * 1000


class Bench:
    def __init__(self, opts: _Opts, progress: object = None) -> None:
        self.opts = opts
        self.results: list[dict] = []
        self.notes: list[str] = []
        self._progress = progress

    def say(self, text: str) -> None:
        if self._progress is not None:
            print(text, file=self._progress, flush=True)

    def add(self, row: dict) -> dict:
        self.results.append(row)
        return row

    def find(self, name: str, metric: str) -> dict | None:
        for r in self.results:
            if r["name"] == name and r["metric"] == metric:
                return r
        return None

    # -- spawn latency ---------------------------------------------------------
    async def spawn_latency(self, an, warm_an, policies: dict, sandbox_ok: bool) -> None:  # type: ignore[no-untyped-def]
        """``warm_an`` holds the prewarm pool: pools are per nursery, so ``an``'s cold spawns never use it."""
        opts = self.opts

        def actor_spawn(label: str, policy, start_method: str, an=an):  # type: ignore[no-untyped-def]
            async def once(i: object) -> float:
                t0 = time.perf_counter()
                portal = await an.start_actor(f"bench-{label}-{i}", enable_modules=[ACTOR_MODULE],
                                              policy=policy, start_method=start_method)
                answer = await portal.run(f"{ACTOR_MODULE}:ping")
                dt = time.perf_counter() - t0
                assert answer == "pong", answer
                await portal.cancel_actor()
                return dt * 1000
            return once

        def prewarmed_spawn(policy):  # type: ignore[no-untyped-def]
            spawn = actor_spawn("prewarm", policy, "ns_forkserver", warm_an)

            async def once(i: object) -> float:
                # Untimed: the pool is full again (its refill must not load
                # the other configurations' turns), then a timed spawn from it.
                await warm_an.prewarm(policy, 1)
                return await spawn(i)
            return once

        configs: dict[str, object] = {"trio_trusted": actor_spawn("trio", policies["trusted"], "trio")}
        if sandbox_ok:
            for key in ("ns_main_default", "ns_main_untrusted", "ns_subint_default", "ns_subint_untrusted",
                        "ns_main_untrusted_no_seccomp", "ns_main_untrusted_no_cgroup"):
                configs[key] = actor_spawn(key, policies[key], "ns_forkserver")
            configs["prewarm_subint_untrusted"] = prewarmed_spawn(policies["ns_subint_untrusted"])
        else:
            self.notes.append("user namespaces unavailable here: ns_forkserver rows are skipped")
        externals, notes = external_baselines()
        self.notes += notes
        for key, argv in externals.items():
            async def ext(i: object, argv: list[str] = argv) -> float:
                return await _run_external(argv)
            configs[key] = ext

        # Warm-up: one of each, not counted (starts the forkserver, fills caches).
        for key, once in list(configs.items()):
            try:
                await once("warmup")  # type: ignore[operator]
            except Exception as exc:
                self.notes.append(f"spawn {key}: skipped, its warm-up failed: {type(exc).__name__}: {exc}")
                del configs[key]
        times: dict[str, list[float]] = {k: [] for k in configs}
        for i in range(opts.spawn_n):
            for key, once in configs.items():
                times[key].append(await once(i))  # type: ignore[operator]
        for key, xs in times.items():
            self.add(summarize(key, "spawn", "ms", xs))
            self.say(f"  spawn {key:24} p50 {self.find(key, 'spawn')['p50']:8.1f} ms")
        if "prewarm_subint_untrusted" in configs:
            await warm_an.prewarm(policies["ns_subint_untrusted"], 0)

    # -- prewarm: idle cost and a burst --------------------------------------------------
    async def prewarm_burst(self, an, policy) -> None:  # type: ignore[no-untyped-def]
        """``burst_n`` spawns back to back from a pool of ``burst_pool``; PSS of an idle warm process."""
        opts = self.opts
        await an.prewarm(policy, opts.burst_pool)
        pool = an._pools[an._backends.get("ns_forkserver").warm_key(policy, [])]
        pss = []
        for booted in list(pool._ready):
            a, r = pss_kib(booted.ref.proc.pid), pss_kib(booted.ref.proc.relay_pid)
            if a is not None and r is not None:
                pss.append((a + r) / 1024)
        if pss:
            self.add(summarize("prewarm_subint_untrusted", "pss_per_warm_process", "MB", pss))
        times = []
        for i in range(opts.burst_n):
            t0 = time.perf_counter()
            portal = await an.start_actor(f"bench-burst-{i}", enable_modules=[ACTOR_MODULE], policy=policy)
            assert await portal.run(f"{ACTOR_MODULE}:ping") == "pong"
            times.append((time.perf_counter() - t0) * 1000)
            await portal.cancel_actor()
        row = self.add(summarize("prewarm_subint_untrusted", f"burst_{opts.burst_n}_from_{opts.burst_pool}", "ms",
                                 times, pool=opts.burst_pool, from_pool=pool.taken))
        await an.prewarm(policy, 0)
        self.say(f"  burst of {opts.burst_n} from a pool of {opts.burst_pool}: p50 {row['p50']:.1f} ms, "
                 f"p90 {row['p90']:.1f} ms; idle warm process PSS "
                 f"{(sum(pss) / len(pss)) if pss else float('nan'):.1f} MB")

    # -- RPC ---------------------------------------------------------------------------
    async def rpc(self, an, label: str, policy, start_method: str, full: bool) -> None:  # type: ignore[no-untyped-def]
        import trio

        opts = self.opts
        portal = await an.start_actor(f"bench-rpc-{label}", enable_modules=[ACTOR_MODULE], policy=policy,
                                      start_method=start_method)
        fn = f"{ACTOR_MODULE}:ping"
        for _ in range(100):  # warm-up
            await portal.run(fn)
        rtts = []
        for _ in range(opts.rtt_n):
            t0 = time.perf_counter()
            await portal.run(fn)
            rtts.append((time.perf_counter() - t0) * 1e6)
        self.add(summarize(label, "rpc_round_trip", "us", rtts))
        self.say(f"  rpc {label:24} round trip p50 {self.find(label, 'rpc_round_trip')['p50']:7.1f} us")
        if not full:
            await portal.cancel_actor()
            return

        async def calls_per_s(callers: int) -> float:
            per = max(1, opts.calls_total // callers)

            async def caller() -> None:
                for _ in range(per):
                    await portal.run(fn)

            t0 = time.perf_counter()
            async with trio.open_nursery() as n:
                for _ in range(callers):
                    n.start_soon(caller)
            return per * callers / (time.perf_counter() - t0)

        for callers in (1, 16):
            await calls_per_s(callers)  # warm-up
            rates = [await calls_per_s(callers) for _ in range(opts.trials)]
            self.add(summarize(label, f"rpc_calls_{callers}_caller{'s' if callers > 1 else ''}", "calls/s", rates))
        self.say(f"  rpc {label:24} calls/s 1 caller {self.find(label, 'rpc_calls_1_caller')['p50']:8.0f}, "
                 f"16 callers {self.find(label, 'rpc_calls_16_callers')['p50']:8.0f}")

        async def stream_rate(n: int, size: int) -> tuple[float, float]:
            got = 0
            t0 = time.perf_counter()
            async with portal.open_stream_from(f"{ACTOR_MODULE}:stream", n=n, size=size) as items:
                async for item in items:
                    got += len(item)
            dt = time.perf_counter() - t0
            assert got == n * size
            return n / dt, got / dt / 1e6

        for tag, n, size in (("64B", opts.stream_small_n, 64), ("64KiB", opts.stream_big_n, 65536)):
            await stream_rate(max(1, n // 10), size)  # warm-up
            pairs = [await stream_rate(n, size) for _ in range(opts.trials)]
            self.add(summarize(label, f"stream_{tag}_msgs", "msgs/s", [p[0] for p in pairs]))
            self.add(summarize(label, f"stream_{tag}_bytes", "MB/s", [p[1] for p in pairs]))
            self.say(f"  stream {tag:6} {self.find(label, f'stream_{tag}_msgs')['p50']:9.0f} msgs/s "
                     f"{self.find(label, f'stream_{tag}_bytes')['p50']:8.1f} MB/s")
        await portal.cancel_actor()

    # -- scale and teardown ------------------------------------------------------------
    async def scale(self, policy, forkserver_pid, tmpdir: str) -> None:  # type: ignore[no-untyped-def]
        import trio

        import nsactor

        for k in self.opts.scale_ks:
            avail = _mem_available_kib()
            if avail is not None and avail < k * 40 * 1024:
                self.notes.append(f"scale K={k}: skipped, MemAvailable {avail // 1024} MiB < {k * 40} MiB")
                continue
            name = f"scale_{k}"
            hwm_reset = reset_peak_rss()
            portals: list = []
            errors: list[str] = []
            answered = 0
            t_exit = 0.0
            try:
                async with nsactor.open_nursery(start_method="ns_forkserver", policy=policy) as an:
                    async def one(i: int) -> None:
                        nonlocal answered
                        try:
                            p = await an.start_actor(f"bench-scale{k}-{i}", enable_modules=[ACTOR_MODULE])
                            portals.append(p)
                            if await p.run(f"{ACTOR_MODULE}:ping") == "pong":
                                answered += 1
                        except Exception as exc:  # count it; the others go on
                            errors.append(f"{type(exc).__name__}: {exc}")

                    t0 = time.perf_counter()
                    async with trio.open_nursery() as n:
                        for i in range(k):
                            n.start_soon(one, i)
                    wall = (time.perf_counter() - t0) * 1000
                    pss = []
                    for p in portals:
                        a, r = pss_kib(p.pid), pss_kib(p._ref.proc.relay_pid)
                        if a is not None and r is not None:
                            pss.append((a + r) / 1024)
                    hwm = _proc_kib("/proc/self/status", "VmHWM")
                    t_exit = time.perf_counter()
            except Exception as exc:
                while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
                    exc = exc.exceptions[0]
                self.notes.append(f"scale K={k}: failed after {answered} of {k} actors answered: "
                                  f"{type(exc).__name__}: {exc}"[:2000])
                self.say(f"  scale K={k}: FAILED {type(exc).__name__}: {exc}"[:500])
                break
            teardown = (time.perf_counter() - t_exit) * 1000
            self.add(summarize(name, "spawn_all_wall", "ms", [wall], answered=answered, k=k))
            self.add(summarize(name, "teardown", "ms", [teardown], k=k))
            if hwm is not None:
                self.add(summarize(name, "parent_peak_rss", "MB", [hwm / 1024], k=k,
                                   since="reset before this K" if hwm_reset else "process start"))
            if pss:
                self.add(summarize(name, "pss_per_actor", "MB", pss, k=k))
            # Leftovers: forkserver children, actor processes, ipc dirs.
            deadline = time.monotonic() + 2
            while True:
                kids = child_pids(forkserver_pid) if forkserver_pid else set()
                live = [p.pid for p in portals if _alive(p.pid)]
                dirs = [d for d in os.listdir(tmpdir) if d.startswith("nsactor-")]
                if not (kids or live or dirs) or time.monotonic() > deadline:
                    break
                await trio.sleep(0.02)
            clean = not (kids or live or dirs)
            self.add(summarize(name, "leftovers_after_teardown", "count", [float(len(kids) + len(live) + len(dirs))],
                               k=k, forkserver_children=len(kids), actors_alive=len(live), ipc_dirs=len(dirs)))
            if not clean:
                self.notes.append(f"scale K={k}: left behind forkserver children {sorted(kids)}, "
                                  f"live actors {live}, ipc dirs {dirs}")
            mean_pss = sum(pss) / len(pss) if pss else float("nan")
            self.say(f"  scale K={k:<4} answered {answered}/{k}, wall {wall:8.1f} ms, teardown {teardown:7.1f} ms, "
                     f"parent peak {((hwm or 0) / 1024):6.1f} MB, PSS/actor {mean_pss:5.1f} MB, "
                     f"{'clean' if clean else 'LEFTOVERS'}")
            if answered != k:
                first = f"; first error: {errors[0][:1500]}" if errors else ""
                self.notes.append(f"scale K={k}: only {answered} of {k} actors answered "
                                  f"({len(errors)} failed){first}")
                self.say(f"  scale K={k}: {len(errors)} failed{first[:500]}")

    # -- ratios and goals -----------------------------------------------------------------
    def ratios(self) -> dict[str, float]:
        out = {}

        def p50(name: str) -> float | None:
            r = self.find(name, "spawn")
            return r["p50"] if r else None

        pairs = {"trio": "trio_trusted", "bare_python": "bare_python", "bwrap": "bwrap", "unshare": "unshare"}
        for ours, ours_key in (("ns_main", "ns_main_untrusted"), ("ns_subint", "ns_subint_untrusted"),
                               ("ns_main_default", "ns_main_default"), ("ns_subint_default", "ns_subint_default")):
            for base, base_key in pairs.items():
                a, b = p50(ours_key), p50(base_key)
                if a is not None and b:
                    out[f"spawn_{ours}_vs_{base}"] = round(a / b, 4)
        full = p50("ns_main_untrusted")
        for without in ("no_seccomp", "no_cgroup"):
            b = p50(f"ns_main_untrusted_{without}")
            if full is not None and b:
                out[f"spawn_ns_main_untrusted_vs_{without}"] = round(full / b, 4)
        warm = p50("prewarm_subint_untrusted")
        for base, base_key in (("cold_subint", "ns_subint_untrusted"), ("bwrap_python", "bwrap")):
            b = p50(base_key)
            if warm is not None and b:
                out[f"spawn_prewarm_vs_{base}"] = round(warm / b, 4)
        a, b = self.find("ns_main_untrusted", "rpc_round_trip"), self.find("trio_trusted", "rpc_round_trip")
        if a and b:
            out["rpc_round_trip_ns_main_vs_trio"] = round(a["p50"] / b["p50"], 4)
        return out

    def goals(self) -> list[dict]:
        out = []
        for key, name, metric, field, op, target, text in GOALS:
            r = self.find(name, metric)
            value = r[field] if r else None
            met = None if value is None else (value <= target if op == "<=" else value >= target)
            out.append({"goal": key, "text": text, "value": value, "target": target, "met": met})
        rows = [r for r in self.results if r["metric"] == "spawn_all_wall" and r.get("k") == 256]
        out.append({"goal": "scale_256", "text": "256 concurrent sandboxed actors (main interpreter) start and answer",
                    "value": rows[0]["answered"] if rows else None, "target": 256,
                    "met": (rows[0]["answered"] == 256) if rows else None})
        sub, bare = self.find("ns_subint_untrusted", "spawn"), self.find("bare_python", "spawn")
        out.append({"goal": "spawn_subint_vs_bare_python",
                    "text": "subint spawn p50 no worse than bare `python -c 'import trio, msgspec'` (same run)",
                    "value": round(sub["p50"] / bare["p50"], 3) if sub and bare else None, "target": 1.0,
                    "met": (sub["p50"] <= bare["p50"]) if sub and bare else None})
        return out


async def run(opts: _Opts, progress: object = None) -> dict:
    """Run every measurement; return the report (see docs/benchmarks.md for the schema)."""
    import msgspec

    import nsactor
    from nsactor._policy import Cgroup
    from nsactor.sandbox.userns import userns_available

    bench = Bench(opts, progress)
    sandbox_ok, why = userns_available()
    base = nsactor.load_policy("untrusted")
    default = nsactor.load_policy("default")
    policies = {
        "trusted": nsactor.load_policy("trusted"),
        "ns_main_default": msgspec.structs.replace(default, interpreter="main"),
        "ns_main_untrusted": msgspec.structs.replace(base, interpreter="main"),
        "ns_subint_default": msgspec.structs.replace(default, interpreter="subint"),
        "ns_subint_untrusted": msgspec.structs.replace(base, interpreter="subint"),
        # what the syscall filter and the cgroup limits add to a spawn
        "ns_main_untrusted_no_seccomp": msgspec.structs.replace(
            base, interpreter="main", seccomp=msgspec.structs.replace(base.seccomp, default="off")),
        "ns_main_untrusted_no_cgroup": msgspec.structs.replace(base, interpreter="main", cgroup=Cgroup()),
    }
    if not sandbox_ok:
        bench.notes.append(f"sandbox unavailable: {why}")
    bench.notes.append(f"each spawn series follows one uncounted warm-up spawn of the same kind; "
                       f"series are interleaved round-robin, n={opts.spawn_n} each")
    async with nsactor.open_nursery(start_method="ns_forkserver") as an, \
            nsactor.open_nursery(start_method="ns_forkserver") as warm_an:
        bench.say("spawn latency (start_actor -> first portal.run result)")
        await bench.spawn_latency(an, warm_an, policies, sandbox_ok)
        bench.say("RPC over the actor's Unix socket")
        await bench.rpc(an, "trio_trusted", policies["trusted"], "trio", full=False)
        if sandbox_ok:
            bench.say("prewarm: a burst from a small pool (subint, untrusted)")
            await bench.prewarm_burst(warm_an, policies["ns_subint_untrusted"])
            await bench.rpc(an, "ns_main_untrusted", policies["ns_main_untrusted"], "ns_forkserver", full=True)
            bench.say("scale: K actors spawned concurrently (main interpreter, untrusted)")
            fs = an._backends.by_name.get("ns_forkserver")
            fs_pid = fs._proc.pid if fs is not None and fs._proc is not None else None
            if fs_pid:
                bench.add(summarize("forkserver", "pss", "MB", [(pss_kib(fs_pid) or 0) / 1024]))
            await bench.scale(policies["ns_main_untrusted"], fs_pid, tempfile_dir())
    return {"host": host_info(), "results": bench.results, "ratios": bench.ratios(),
            "goals": bench.goals(), "notes": bench.notes, "quick": opts.quick}


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def _fmt(x: float) -> str:
    if x != x:  # nan
        return "-"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def format_report(report: dict) -> str:
    h = report["host"]
    lines = [f"nsactor bench{' --quick' if report.get('quick') else ''}, {h['date']}: "
             f"{h['hostname']}, Linux {h['kernel']}, {h['cpus']} CPU ({h['cpu']}), "
             f"{h['mem_total_mib']} MiB, Python {h['python']}, uid {h['uid']}", ""]
    cols = ("name", "metric", "unit", "p50", "p90", "p99", "max", "n")
    rows = [[r["name"], r["metric"], r["unit"], *(_fmt(r[c]) for c in ("p50", "p90", "p99", "max")), str(r["n"])]
            for r in report["results"]]
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    lines.append("  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(cols, widths))))
    for row in rows:
        lines.append("  ".join(v.ljust(w) if i < 3 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))))
    lines += ["", "ratios (p50 / p50, same run):"]
    lines += [f"  {k:40} {v:.3f}" for k, v in report["ratios"].items()]
    lines += ["", "goals:"]
    for g in report["goals"]:
        mark = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        value = "-" if g["value"] is None else _fmt(float(g["value"]))
        lines.append(f"  [{mark:12}] {g['text']} (measured: {value})")
    if report["notes"]:
        lines += ["", "notes:"] + [f"  - {n}" for n in report["notes"]]
    return "\n".join(lines)


def bench_command(args) -> int:  # type: ignore[no-untyped-def]
    import json
    import shutil
    import tempfile

    import trio

    opts = _Opts(quick=args.quick)
    # A private temp dir, so the leftover check sees only our ipc dirs; the
    # sandbox's unprivileged uid must traverse it.
    old_tempdir = tempfile.tempdir
    private = tempfile.mkdtemp(prefix="nsactor-bench-")
    os.chmod(private, 0o755)
    tempfile.tempdir = private
    try:
        report = trio.run(run, opts, sys.stderr)
    finally:
        tempfile.tempdir = old_tempdir
        shutil.rmtree(private, ignore_errors=True)
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0


def add_bench(sub) -> None:  # type: ignore[no-untyped-def]
    p = sub.add_parser(
        "bench",
        help="measure spawn latency, RPC, scale and teardown",
        description="Measure spawn latency (trio backend, ns_forkserver main/subint, external baselines), "
                    "RPC round trip and throughput, K concurrent actors (memory, teardown). "
                    "See docs/benchmarks.md.",
    )
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON to FILE")
    p.add_argument("--quick", action="store_true", help="a few seconds: small n, K in {1, 8} (a smoke test)")
    p.set_defaults(func=bench_command)
