"""The public surface: construction, settings validation, errors naming the
field, subclassing, pickling, and no side effects at import."""

from __future__ import annotations

import ast
import io
import logging
import pickle
import subprocess
import sys
from contextlib import redirect_stdout
from types import SimpleNamespace

import pytest

import plugin_scheduling as ps

GPU_PLUGIN = SimpleNamespace(
    name="whisper",
    manifest={"resources": {"requires_gpu": True, "min_gpu_vram_mb": 4096, "min_system_ram_mb": 1024}},
)


def test_all_schedulers_are_resource_schedulers():
    for cls in (ps.PermissiveScheduler, ps.SafetyScheduler, ps.QueueScheduler):
        assert issubclass(cls, ps.ResourceScheduler)
        assert isinstance(cls(), ps.ResourceScheduler)


def test_incomplete_subclass_of_the_abc_cannot_be_instantiated():
    class Half(ps.ResourceScheduler):
        def allocate(self, plugin_meta, stats_provider):
            return True

    with pytest.raises(TypeError):
        Half()  # type: ignore[abstract]


def test_queue_settings_defaults_and_positional():
    q = ps.QueueScheduler()
    assert (q.timeout, q.poll_interval) == (300.0, 2.0)
    assert str(q.poll_interval) == "2.0"
    q = ps.QueueScheduler(5, 0.5)
    assert (q.timeout, q.poll_interval) == (5, 0.5)
    q.timeout = 7
    assert q.timeout == 7
    assert q.logger.name == "plugin_scheduling.QueueScheduler"
    assert repr(q) == "QueueScheduler(timeout=7, poll_interval=0.5)"


@pytest.mark.parametrize(
    "kwargs, exc, words",
    [
        ({"timeout": "5"}, TypeError, "timeout"),
        ({"timeout": None}, None, None),  # None means the default
        ({"timeout": -1}, ValueError, "timeout"),
        ({"timeout": float("nan")}, ValueError, "timeout"),
        ({"poll_interval": -0.1}, ValueError, "poll_interval"),
        ({"poll_interval": float("inf")}, ValueError, "poll_interval"),
        ({"poll_interval": [1]}, TypeError, "poll_interval"),
        ({"timeout": float("inf")}, None, None),
    ],
)
def test_queue_settings_are_validated_naming_the_field(kwargs, exc, words):
    if exc is None:
        ps.QueueScheduler(**kwargs)
        return
    with pytest.raises(exc, match=words):
        ps.QueueScheduler(**kwargs)


def test_setter_validates_too():
    q = ps.QueueScheduler()
    with pytest.raises(ValueError, match="poll_interval"):
        q.poll_interval = -5
    assert q.poll_interval == 2.0


def test_permissive_and_safety_take_no_arguments_like_the_reference():
    with pytest.raises(TypeError):
        ps.SafetyScheduler(1)
    with pytest.raises(TypeError):
        ps.PermissiveScheduler(x=1)


def test_subclass_with_its_own_init_signature():
    class Named(ps.QueueScheduler):
        def __init__(self, label, timeout=1.0):
            super().__init__(timeout=timeout, poll_interval=0.01)
            self.label = label

    s = Named("gpu-queue", timeout=3)
    assert (s.label, s.timeout, s.poll_interval) == ("gpu-queue", 3, 0.01)
    assert s.logger.name == "plugin_scheduling.Named"


@pytest.mark.parametrize(
    "stats, exc, words",
    [
        ({"gpu_free_memory_mb": "8000"}, TypeError, "gpu_free_memory_mb"),
        (None, AttributeError, "stats must be a mapping"),
        ([1, 2], AttributeError, "stats must be a mapping"),
    ],
)
def test_bad_stats_raise_subclasses_of_the_reference_exception(stats, exc, words):
    for scheduler in (ps.SafetyScheduler(), ps.QueueScheduler(timeout=0, poll_interval=0)):
        with pytest.raises(exc, match=words) as info:
            scheduler.allocate(GPU_PLUGIN, lambda: stats)
        assert isinstance(info.value, (ps.InvalidRequirement, ps.InvalidStats))


def test_bad_requirement_names_field_and_value():
    meta = SimpleNamespace(name="p", manifest={"resources": {"min_system_ram_mb": None}})
    with pytest.raises(ps.InvalidRequirement, match=r"min_system_ram_mb.*None") as info:
        ps.SafetyScheduler().allocate(meta, lambda: {"memory_available_mb": 10})
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value.__cause__, TypeError)


def test_manifest_not_a_mapping():
    meta = SimpleNamespace(name="p", manifest=["resources"])
    with pytest.raises(ps.InvalidManifest, match="manifest") as info:
        ps.SafetyScheduler().allocate(meta, dict)
    assert isinstance(info.value, AttributeError)


def test_provider_not_callable_is_named():
    with pytest.raises(TypeError, match="stats_provider"):
        ps.SafetyScheduler().allocate(GPU_PLUGIN, {"gpu_free_memory_mb": 1})


def test_blocked_line_goes_through_sys_stdout():
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert ps.SafetyScheduler().allocate(GPU_PLUGIN, lambda: {"gpu_free_memory_mb": 4095.5}) is False
    assert buf.getvalue() == "[Scheduler] Blocked whisper: Needs 4096MB VRAM, has 4095.5MB\n"


def test_overriding_check_resources_in_a_subclass():
    class Strict(ps.SafetyScheduler):
        def _check_resources(self, plugin_meta, stats):
            return "no"

    assert Strict().allocate(GPU_PLUGIN, dict) == "no"


def test_get_active_plugins_returns_a_copy():
    q = ps.QueueScheduler()
    q.on_execution_start("a")
    active = q.get_active_plugins()
    active.add("b")
    assert q.get_active_plugins() == {"a"}
    q.on_execution_finish("a")
    q.on_execution_finish("never-started")
    assert q.get_active_plugins() == set()


def test_pickle_round_trip():
    q = pickle.loads(pickle.dumps(ps.QueueScheduler(12, 0.25)))
    assert (q.timeout, q.poll_interval) == (12, 0.25)
    assert isinstance(pickle.loads(pickle.dumps(ps.SafetyScheduler())), ps.SafetyScheduler)


def test_import_has_no_side_effects():
    code = (
        "import logging, threading, sys, io\n"
        "out = io.StringIO(); sys.stdout = out\n"
        "before = threading.active_count()\n"
        "import plugin_scheduling\n"
        "sys.stdout = sys.__stdout__\n"
        "assert out.getvalue() == '', out.getvalue()\n"
        "assert threading.active_count() == before\n"
        "assert logging.getLogger().handlers == [], logging.getLogger().handlers\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_demo_runs():
    result = subprocess.run(
        [sys.executable, "-m", "plugin_scheduling", "demo"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "llama-8b: admitted" in result.stdout
    assert "Resources busy. Waiting 5.0s..." in result.stdout
    assert "[Scheduler] Blocked whisper-large" in result.stdout
    assert "ReservationScheduler(timeout=10" in result.stdout  # shown with its public API
    assert "sdxl: admitted" in result.stdout and "embedder: finished" in result.stdout


def test_queue_logger_level_and_message(caplog):
    q = ps.QueueScheduler(timeout=0, poll_interval=0)
    with caplog.at_level(logging.INFO, logger="plugin_scheduling.QueueScheduler"):
        assert q.allocate(GPU_PLUGIN, lambda: {"gpu_free_memory_mb": 1}) is False
    assert [(r.levelname, r.getMessage()) for r in caplog.records][-1] == (
        "ERROR",
        "Timeout waiting for resources for whisper",
    )


@pytest.mark.parametrize("example", ["async_app.py", "reservations.py"])
def test_examples_run(example):
    import pathlib

    path = pathlib.Path(__file__).resolve().parent.parent / "examples" / example
    result = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    if example == "reservations.py":
        lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if "admits:" in line)
        assert len(ast.literal_eval(lines["SafetyScheduler admits"])) == 2  # check-then-act: both
        assert len(ast.literal_eval(lines["ReservationScheduler admits"])) == 1  # never double-booked
