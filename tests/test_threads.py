"""torch's thread count: gte's default from the CPU affinity and the cgroup quota (read from files given as
paths, so that fake ones stand in), and the user's choices that win over it, each in a fresh process; and the
threads a forward pass computes with, sized by the work at hand."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import gte
from gte import threads
from gte.prepack import supported
from gte.threads import WORK_PER_THREAD, cgroup_cpu_limit, default_threads, sized_to

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


# ------------------------------------------------------------------------------ threads sized by the work
CPU = torch.device("cpu")
QUERY = "what is the capital of China?"


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("work, inside", [(0, 1), (WORK_PER_THREAD * 3.5, 3), (WORK_PER_THREAD * 100, 4)])
def test_work_sizes_the_threads_of_a_block_up_to_torchs_count(four_threads, work, inside):
    assert threads.threads_sleep()  # gte's default wait policy: the tests import gte before torch
    with sized_to(work, CPU):
        assert torch.get_num_threads() == inside
    assert torch.get_num_threads() == 4
    with pytest.raises(KeyError), sized_to(work, CPU):
        raise KeyError
    assert torch.get_num_threads() == 4


def test_only_cpu_work_is_sized(four_threads):
    with sized_to(0, torch.device("meta")):
        assert torch.get_num_threads() == 4


def test_threads_that_spin_are_not_sized(four_threads, monkeypatch):
    monkeypatch.setattr(threads, "threads_sleep", lambda: False)
    with sized_to(0, CPU):
        assert torch.get_num_threads() == 4


def record_threads(model: torch.nn.Module, monkeypatch: pytest.MonkeyPatch) -> dict[str, set[int]]:
    """The thread counts that the projections' kernel, the attention kernel and the norms of `model`'s encoder
    run with, by kind."""
    seen: dict[str, set[int]] = {}

    def recording(kind: str, kernel):
        def run(*args, **kwargs):
            seen.setdefault(kind, set()).add(torch.get_num_threads())
            return kernel(*args, **kwargs)

        return run

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", recording("projection", torch.ops.mkldnn._linear_pointwise))
    monkeypatch.setattr(F, "scaled_dot_product_attention", recording("attention", F.scaled_dot_product_attention))
    for norm in (m for m in model.encoder.modules() if isinstance(m, torch.nn.LayerNorm)):
        norm.register_forward_pre_hook(lambda *_: seen.setdefault("norm", set()).add(torch.get_num_threads()))
    return seen


@pytest.mark.skipif(not supported(torch.float32), reason="no packed oneDNN kernel on this machine / torch build")
def test_a_query_runs_on_one_thread_and_large_work_on_all(tiny_model_dir, four_threads, monkeypatch):
    embedder = gte.Embedder(tiny_model_dir)
    torch.set_num_threads(4)  # loading gave torch its default count
    seen = record_threads(embedder.model, monkeypatch)
    query = embedder.encode(QUERY)
    assert seen == {"projection": {1}, "attention": {1}, "norm": {1}}
    monkeypatch.setattr(threads, "WORK_PER_THREAD", 1e-9)  # any work keeps every thread busy
    seen.clear()
    np.testing.assert_allclose(embedder.encode(QUERY), query, atol=1e-6)
    assert seen == {"projection": {4}, "attention": {4}, "norm": {4}}
    assert torch.get_num_threads() == 4
