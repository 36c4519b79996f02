"""torch's thread count: gte's default from the CPU affinity and the cgroup quota (read from files given as
paths, so that fake ones stand in), and the user's choices that win over it, each in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gte.threads import cgroup_cpu_limit, default_threads

MACHINE = os.cpu_count()


# ------------------------------------------------------------------------------ the default
@pytest.mark.parametrize(
    "torch_count, affinity, quota, expected, source",
    [
        (32, 64, None, 32, f"torch's default on this machine's {MACHINE} CPUs"),
        (32, 2, None, 2, f"CPU affinity: 2 of {MACHINE} CPUs"),
        (32, 8, 2.5, 2, "cgroup CPU quota: 2.5 CPUs"),  # whole CPUs
        (32, 8, 0.5, 1, "cgroup CPU quota: 0.5 CPUs"),  # at least one
        (4, 8, 6.0, 4, f"torch's default on this machine's {MACHINE} CPUs"),
        (32, 3, 3.0, 3, f"CPU affinity: 3 of {MACHINE} CPUs"),
    ],
)
def test_default_is_the_smallest_of_torch_affinity_and_quota(torch_count, affinity, quota, expected, source):
    choice = default_threads(torch_count, affinity, quota)
    assert (choice.count, choice.source) == (expected, source)


def fake_cgroups(root: Path, mounts: list[str], groups: list[str], files: dict[str, str]) -> tuple[Path, Path]:
    """A mountinfo and a /proc/self/cgroup file, and the cgroup files they point at under `root`."""
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (root / "mountinfo").write_text("".join(f"{line}\n" for line in mounts))
    (root / "cgroup").write_text("".join(f"{line}\n" for line in groups))
    return root / "mountinfo", root / "cgroup"


def test_cgroup_v2_quota_is_the_tightest_on_the_way_up(tmp_path):
    """cpu.max of the process's cgroup and of those above it, up to the mount point."""
    mount = f"30 23 0:26 / {tmp_path}/fs rw,nosuid - cgroup2 cgroup2 rw,nsdelegate"
    files = {"fs/kubepods/pod/ctr/cpu.max": "max 100000", "fs/kubepods/pod/cpu.max": "150000 100000",
             "fs/kubepods/cpu.max": "400000 100000"}  # fmt: skip
    assert cgroup_cpu_limit(*fake_cgroups(tmp_path, [mount], ["0::/kubepods/pod/ctr"], files)) == 1.5


def test_cgroup_v2_inside_a_cgroup_namespace(tmp_path):
    mount = f"30 23 0:26 / {tmp_path}/fs rw - cgroup2 cgroup2 rw"
    assert cgroup_cpu_limit(*fake_cgroups(tmp_path, [mount], ["0::/"], {"fs/cpu.max": "200000 100000"})) == 2.0


def test_cgroup_v1_cpu_controller(tmp_path):
    """A container's v1 hierarchy is mounted at its own cgroup (the mount's root is the process's path)."""
    mounts = [f"32 31 0:29 /docker/abc {tmp_path}/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct",
              f"33 31 0:30 /docker/abc {tmp_path}/memory rw - cgroup cgroup rw,memory"]  # fmt: skip
    groups = ["4:memory:/docker/abc", "3:cpu,cpuacct:/docker/abc", "2:cpuset:/docker/abc", "0::/"]
    files = {"cpu,cpuacct/cpu.cfs_quota_us": "300000", "cpu,cpuacct/cpu.cfs_period_us": "100000",
             "memory/cpu.cfs_quota_us": "100000", "memory/cpu.cfs_period_us": "100000"}  # fmt: skip
    assert cgroup_cpu_limit(*fake_cgroups(tmp_path, mounts, groups, files)) == 3.0


@pytest.mark.parametrize("files", [{"fs/cpu.max": "max 100000"}, {}, {"fs/cpu.max": "garbage"}])
def test_no_cgroup_quota(tmp_path, files):
    mount = f"30 23 0:26 / {tmp_path}/fs rw - cgroup2 cgroup2 rw"
    assert cgroup_cpu_limit(*fake_cgroups(tmp_path, [mount], ["0::/"], files)) is None


def test_v1_without_a_quota_and_no_proc_files(tmp_path):
    mount = f"32 31 0:29 / {tmp_path}/cpu rw - cgroup cgroup rw,cpu"
    files = {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    assert cgroup_cpu_limit(*fake_cgroups(tmp_path, [mount], ["1:cpu:/"], files)) is None
    assert cgroup_cpu_limit(tmp_path / "no-mountinfo", tmp_path / "no-cgroup") is None


# ------------------------------------------------------------------------------ in a fresh process
ONE_CPU = "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})"
SET_ONE = "import torch; torch.set_num_threads(1)"
REPORT = "import gte.threads, torch; print(torch.get_num_threads(), gte.threads.choose().source)"


def run(tiny_model_dir: Path, before: str, load: str, env: dict[str, str]) -> tuple[int, str]:
    """(torch's thread count, its source) after `before`, then `load`, in a fresh process."""
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    code = f"{before}\n{load.format(model=str(tiny_model_dir))}\n{REPORT}"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=clean | env, timeout=300)
    assert done.returncode == 0, done.stderr
    count, source = done.stdout.splitlines()[-1].split(" ", 1)
    return int(count), source


EMBEDDER = "import gte; gte.Embedder({model!r})"
COMMAND = "import gte_cli; gte_cli.main(['embed', '-m', {model!r}, '--threads', '1', 'hello'])"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs to see a default of 1 from one")
@pytest.mark.parametrize(
    "before, load, env, source",
    [
        (ONE_CPU, EMBEDDER, {}, f"CPU affinity: 1 of {MACHINE} CPUs"),  # the default, when gte loads a model
        ("", EMBEDDER, {"OMP_NUM_THREADS": "1"}, "OMP_NUM_THREADS"),
        ("", EMBEDDER, {"MKL_NUM_THREADS": "1"}, "MKL_NUM_THREADS"),
        (SET_ONE, EMBEDDER, {}, "torch.set_num_threads"),
        ("", COMMAND, {}, "--threads"),
    ],
    ids=["affinity", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "torch.set_num_threads", "--threads"],
)
def test_thread_count_and_where_it_came_from(tiny_model_dir, before, load, env, source):
    assert run(tiny_model_dir, before, load, env) == (1, source)


def test_the_user_can_ask_for_more_than_the_default(tiny_model_dir):
    """--threads is taken as given, above the CPUs the process may use too."""
    count, source = run(tiny_model_dir, ONE_CPU, COMMAND.replace("'1'", "'3'"), {})
    assert (count, source) == (3, "--threads")
