"""cryopose's malloc settings (cryopose.jobs.allocator)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from cryopose.jobs import allocator
from cryopose.jobs.allocator import ALLOCATOR_SETTINGS, allocator_environment


def test_environment_for_new_processes_leaves_what_the_user_set():
    env = allocator_environment({"MALLOC_ARENA_MAX": "4", "PATH": "/bin"})
    assert "MALLOC_ARENA_MAX" not in env
    assert env == {
        "MALLOC_TOP_PAD_": str(256 << 20),
        "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
        "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    }
    assert len(allocator_environment({})) == len(ALLOCATOR_SETTINGS)


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_accepts_every_setting():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    code = "from cryopose.jobs.allocator import tune_allocator; print(tune_allocator())"
    assert subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split() == ["True"]


class _FakeLibc:
    def __init__(self, refuse: int | None = None) -> None:
        self.calls: list[tuple[int, int]] = []
        self.refuse = refuse

    def mallopt(self, param, value) -> int:
        self.calls.append((param.value, value.value))
        return 0 if param.value == self.refuse else 1


def test_tune_skips_what_the_user_set_unless_overridden(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: libc)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    monkeypatch.delenv("MALLOC_TOP_PAD_", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert allocator.tune_allocator()
    assert libc.calls == [(-8, 1), (-2, 256 << 20), (-3, 32 << 20)]
    libc.calls.clear()
    assert allocator.tune_allocator(override=("MALLOC_TRIM_THRESHOLD_",), one_arena=False)
    assert libc.calls == [(-2, 256 << 20), (-1, 256 << 20), (-3, 32 << 20)]
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: _FakeLibc(refuse=-2))
    assert not allocator.tune_allocator()


def test_command_line_tunes_before_torch_is_imported():
    code = (
        "import sys; import cryopose.jobs.allocator as a; calls = []; "
        "a.tune_allocator = lambda *x, **k: calls.append('torch' in sys.modules); "
        "import cryopose.cli.main as m; m.tune_allocator = a.tune_allocator; "
        "sys.argv = ['cryopose', '--version']\n"
        "try:\n    m.main()\nexcept SystemExit:\n    pass\nprint(calls)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[False]"


def test_worker_plugin_replaces_the_nanny_trim_and_keeps_arenas_for_several_tasks(monkeypatch):
    from types import SimpleNamespace

    import torch

    from cryopose.jobs import executor

    calls = []
    monkeypatch.setattr(executor, "tune_allocator", lambda **kw: calls.append(kw) or True)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append({"torch_threads": n}))
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # what Dask's nanny sets by default
    executor.TorchThreads(3).setup(SimpleNamespace(state=SimpleNamespace(nthreads=1)))
    assert calls == [{"override": ("MALLOC_TRIM_THRESHOLD_",), "one_arena": True}, {"torch_threads": 3}]
    calls.clear()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")  # the user's own: kept
    executor.TorchThreads(2).setup(SimpleNamespace(state=SimpleNamespace(nthreads=4)))
    assert calls == [{"override": (), "one_arena": False}, {"torch_threads": 2}]
