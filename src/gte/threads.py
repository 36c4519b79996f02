"""How many CPU threads torch computes with: by default, no more than the CPUs this process may use.

torch sizes its thread pool by the machine's cores, or at best by the CPUs of the process's affinity mask, never
by its cgroup CPU quota: in a 2-CPU container on a 64-core node it starts 32 threads that take turns on 2 CPUs.
gte's default is the smallest of torch's own count, the CPUs in the affinity mask (taskset, cpusets) and the
cgroup quota (docker --cpus, a Kubernetes CPU limit; whole CPUs, at least one). gte applies it when it loads a
model, unless the user chose a count: `--threads N`, OMP_NUM_THREADS or MKL_NUM_THREADS, or torch.set_num_threads
(seen as a count torch would not pick by itself; one that it would reads as the default, which only ever lowers
it).

A forward pass computes on fewer of those threads when its work is small and the threads sleep as they wait
(gte's default): waking a sleeping thread for each op costs more than a query's few rows gain from it.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from .tracing import is_exporting

USER_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")  # torch reads them as it starts
MOUNTINFO = Path("/proc/self/mountinfo")
SELF_CGROUP = Path("/proc/self/cgroup")
# Multiply-adds (float32, one core) worth waking one more thread for. Under gte's OpenMP wait policy (PASSIVE)
# every parallel region (each op of a forward pass) wakes the sleeping threads: 0.1-0.3 ms on a 2-CPU VM, as long
# as one core takes for about 16M multiply-adds at a query's few rows. The embedded model's one-query forward
# pass, whose largest product is 5M, ran 1.5x faster on one thread than on two (BENCHMARKS.md).
WORK_PER_THREAD = 16_000_000


@dataclass(frozen=True)
class Threads:
    count: int
    source: str  # where the count comes from, in words

    def report(self) -> dict[str, int | str]:
        """As `gte info` and the server's /info show it."""
        return {"threads": self.count, "threads_from": self.source}


_applied: Threads | None = None  # the count gte last gave torch, and why


def configure(choice: Threads | None = None) -> Threads:
    """Give torch `choice`'s thread count, else `choose()`'s; returns what torch now runs with."""
    global _applied
    choice = choice or choose()
    if torch.get_num_threads() != choice.count:
        torch.set_num_threads(choice.count)
    _applied = choice
    return choice


def choose() -> Threads:
    """The user's choice where there is one (the count torch runs with now), else the default."""
    now = torch.get_num_threads()
    if _applied is not None and _applied.count == now:
        return _applied
    for name in USER_VARIABLES:
        if os.environ.get(name, "").strip():
            return Threads(now, name)
    affinity = affinity_cpus()
    if not torch_picked(now, affinity):
        return Threads(now, "torch.set_num_threads")
    return default_threads(now, affinity, cgroup_cpu_limit())


def torch_picked(count: int, affinity: int) -> bool:
    """Whether torch would pick `count` threads by itself: the machine's cores (the size of its inter-op pool,
    which torch.set_num_threads leaves alone), or, where its OpenMP honours the affinity mask, the CPUs in it."""
    return count in (torch.get_num_interop_threads(), affinity)


def default_threads(torch_count: int, affinity: int, quota: float | None) -> Threads:
    """The smallest of torch's own count, the CPUs in the affinity mask and the cgroup quota (whole CPUs, at least
    one), named by the limit that sets it."""
    machine = os.cpu_count()
    quota_cpus = max(1, math.floor(quota)) if quota is not None else affinity
    count = min(torch_count, affinity, quota_cpus)
    if quota is not None and quota_cpus == count and quota < affinity:
        return Threads(count, f"cgroup CPU quota: {quota:g} CPUs")
    if affinity == count and (affinity < machine or affinity < torch_count):
        return Threads(count, f"CPU affinity: {affinity} of {machine} CPUs")
    return Threads(count, f"torch's default on this machine's {machine} CPUs")


@contextmanager
def sized_to(work: int, device: torch.device) -> Iterator[None]:
    """Run the block on as many of torch's threads as `work` (the multiply-adds of its largest matrix product)
    keeps busy: one per WORK_PER_THREAD, at least one, at most the count torch has. Only CPU work is sized, only
    where the threads sleep as they wait, and never while torch.export traces; torch's count is as before
    afterwards."""
    if device.type != "cpu" or is_exporting() or not threads_sleep():
        yield
        return
    before = torch.get_num_threads()
    count = max(1, min(before, int(work // WORK_PER_THREAD)))
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@functools.cache
def threads_sleep() -> bool:
    """Whether torch's OpenMP threads sleep as they wait (OMP_WAIT_POLICY=PASSIVE, gte's default; libgomp reads it
    as torch loads, which `import gte` comes before). Threads that spin wake in microseconds: a query's forward
    pass then runs best on all of them."""
    return os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE"


def affinity_cpus() -> int:
    """CPUs the process may run on (all of them where the system has no affinity call)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# ------------------------------------------------------------------------------ the cgroup CPU quota
def cgroup_cpu_limit(mountinfo: Path = MOUNTINFO, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """CPUs the process's cgroup quota allows, the tightest over its cgroup and those above it (cgroup v2
    cpu.max; v1 cpu.cfs_quota_us / cpu.cfs_period_us); None without a quota, or where none can be read."""
    try:
        mounts, groups = mountinfo.read_text().splitlines(), self_cgroup.read_text().splitlines()
    except OSError:  # not Linux, or no /proc
        return None
    limits = [limit for limit in map(_read_limit, _cgroup_directories(mounts, groups)) if limit is not None]
    return min(limits, default=None)


def _cgroup_directories(mounts: list[str], groups: list[str]) -> Iterator[Path]:
    """The directories of the process's CPU cgroups, each followed by those above it up to its mount point."""
    paths = {}  # "cgroup2", or "cgroup" (v1, its cpu controller) -> the process's cgroup path
    for line in groups:  # hierarchy-id:controllers:path
        _, controllers, path = line.split(":", 2)
        if not controllers:
            paths["cgroup2"] = path
        elif "cpu" in controllers.split(","):
            paths["cgroup"] = path
    for line in mounts:  # id parent major:minor root mount-point options [optional ...] - fstype source super-options
        fields = line.split()
        kind, _, options = fields[fields.index("-") + 1 :][:3]
        if kind in paths and (kind == "cgroup2" or "cpu" in options.split(",")):
            yield from _upwards(Path(fields[4]), Path(fields[3]), Path(paths[kind]))


def _upwards(point: Path, root: Path, path: Path) -> Iterator[Path]:
    """The directory of cgroup `path` in a hierarchy whose `root` is mounted at `point`, then each one above it
    up to `point` (`point` alone when the path lies outside that root)."""
    directory = point / path.relative_to(root) if path.is_relative_to(root) else point
    yield directory
    while directory != point:
        directory = directory.parent
        yield directory


def _read_limit(directory: Path) -> float | None:
    """The CPUs this cgroup's quota allows; None without a quota or a file to read it from."""
    try:
        if (directory / "cpu.max").is_file():  # v2: "max 100000" (no quota) or "150000 100000"
            quota, period = (directory / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if (directory / "cpu.cfs_quota_us").is_file():  # v1: -1 for no quota
            quota_us = int((directory / "cpu.cfs_quota_us").read_text())
            return quota_us / int((directory / "cpu.cfs_period_us").read_text()) if quota_us > 0 else None
    except (OSError, ValueError):
        pass
    return None
