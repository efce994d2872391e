"""Notebook display: results and quota views render as escaped HTML tables."""

from __future__ import annotations

from pathlib import Path

from plugin_scheduling import simulate
from plugin_scheduling.quotas import LocalQuotaProvider


def test_a_simulation_result_shows_its_metrics_as_a_table() -> None:
    trace = [{"job_id": "a", "submit_time": 0, "duration": 7200, "num_gpu": 1}]
    html = simulate(trace, gpus=1)._repr_html_()
    assert html.startswith("<table>") and "policy fifo" in html
    assert "<td>avg_jct_s</td><td>7,200</td><td>2.00 h</td>" in html


def test_a_quota_shows_one_row_per_resource_and_escapes_names(tmp_path: Path) -> None:
    info = LocalQuotaProvider(path=tmp_path / "q.db").set_quota("<b>team</b>", gpu_quota=2)
    html = info._repr_html_()
    assert "&lt;b&gt;team&lt;/b&gt;" in html and "<b>team" not in html
    assert "<td>gpu</td><td>0</td><td>2</td><td>2</td><td>0</td>" in html
    assert html.count("<tr>") == 5  # header + cpu, memory, gpu, vram
