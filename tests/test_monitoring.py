"""Monitoring history: ring buffer, I/O rates, least-squares prediction, the
sampler, and the job scheduler's trend figures."""

from __future__ import annotations

import asyncio

import pytest

from plugin_scheduling import SimulatedSystem
from plugin_scheduling.jobs import JobScheduler
from plugin_scheduling.monitoring import METRICS, MonitorHistory, sample


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def stats(cpu: float, mem: float, gpu: float | None = None) -> dict:
    return {"cpu_percent": cpu, "memory_used_mb": mem, "gpu_used_memory_mb": gpu}


def test_ring_buffer_trend_and_prediction_follow_the_clock() -> None:
    clock = Clock()
    h = MonitorHistory(capacity=5, clock=clock)
    for i in range(8):
        clock.t = float(i)
        h.record(stats(10.0 + i, 1000.0 + 100.0 * i))
    samples = h.history()
    assert [s["t"] for s in samples] == [3.0, 4.0, 5.0, 6.0, 7.0] and len(h) == 5
    assert h.trend("memory_used_mb") == pytest.approx(100.0)
    assert h.predict("memory_used_mb", 10) == pytest.approx(1700.0 + 1000.0)
    assert h.predict("cpu_percent", 3, window_s=2) == pytest.approx(20.0)
    assert h.trend("gpu_used_memory_mb") is None  # no GPU figures: no trend, not zero
    assert samples[0]["gpu_used_memory_mb"] is None
    for key in ("disk_read_bps", "disk_write_bps", "net_rx_bps", "net_tx_bps"):
        assert key in samples[0] and (samples[-1][key] is None or samples[-1][key] >= 0)
    assert set(METRICS) == set(samples[0]) - {"t"}


def test_bad_input_names_the_field() -> None:
    clock = Clock()
    h = MonitorHistory(clock=clock)
    with pytest.raises(ValueError, match="metric must be one of"):
        h.predict("load", 1)
    with pytest.raises(ValueError, match="seconds_ahead"):
        h.predict("cpu_percent", float("nan"))
    with pytest.raises(ValueError, match="capacity"):
        MonitorHistory(capacity=1)
    with pytest.raises(TypeError, match="cpu_percent"):
        h.record({"cpu_percent": "high"})
    clock.t = 5
    h.record(stats(1, 1))
    clock.t = 4
    with pytest.raises(ValueError, match="backwards"):
        h.record(stats(1, 1))


@pytest.mark.asyncio
async def test_sampler_and_scheduler_trends() -> None:
    sim = SimulatedSystem(gpus=[8000.0], ram_total_mb=65536.0)
    h = MonitorHistory()
    assert await sample(h, sim.snapshot_async, interval=0.01, count=3) == 3
    assert len(h) == 3
    clock = Clock()
    h2 = MonitorHistory(clock=clock)
    s = JobScheduler("fifo", journal=None, stats_provider=sim.snapshot_async, clock=clock, history=h2)
    for i in range(4):
        clock.t = float(i * 2)
        sim.occupy_ram(500.0)
        await s.trigger_async()
    assert len(h2) == 4
    out = s.get_scheduler_stats()
    assert out["trend_per_s"]["memory_used_mb"] == pytest.approx(250.0)
    assert out["predicted_in_60s"]["memory_used_mb"] == pytest.approx(2000.0 + 250.0 * 60)
    assert out["trend_per_s"]["cpu_percent"] == pytest.approx(0.0)
    await asyncio.sleep(0)
