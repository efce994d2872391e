"""Shared test scaffolding.

The cjm host: a real ``cjm_plugin_system.core.manager.PluginManager`` loading tiny
plugins written into a tmp dir, each in its own worker process (``python -m
cjm_plugin_system.core.worker``, HTTP on 127.0.0.1). Used by ``test_host.py``,
``test_reservation.py`` and ``test_cjm_monitor.py``; one copy here::

    from conftest import PROBE_PLUGIN_SOURCE, plugin_manifest, running_cjm_host

    with running_cjm_host(root, sources={...}, manifests=[...], scheduler=...) as env:
        env.manager, env.probe, env.procs, ...

Everything cjm writes (config, logs, data) goes into the tmp dir (``CJM_DATA_DIR``,
cwd, ``reset_config``); workers are always torn down, and one still running after
``unload_all`` fails the test module.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Mapping, Sequence

import pytest

#: A plugin whose executions can be counted from the host (the worker's /progress),
#: which echoes its call and can sleep or fail on request. The worker's environment
#: variable ``PROBE_NAME`` is its name, so one source serves several plugins.
PROBE_PLUGIN_SOURCE = '''\
import os
import time

from cjm_plugin_system.core.interface import PluginInterface


class ProbePlugin(PluginInterface):
    """Tiny plugin: echoes its call, can sleep or fail on request, counts executions."""

    def __init__(self):
        self._config = {}
        self._calls = 0

    @property
    def name(self):
        return os.environ["PROBE_NAME"]

    @property
    def version(self):
        return "1.0.0"

    def initialize(self, config=None):
        self._config = dict(config or {})

    def get_config_schema(self):
        return {"type": "object", "properties": {"greeting": {"type": "string", "default": "hi"}}}

    def get_current_config(self):
        return dict(self._config)

    def cleanup(self):
        pass

    def execute(self, *args, **kwargs):
        self._calls += 1
        # Execution counter, readable from the host through the worker's /progress endpoint.
        self.report_progress(float(self._calls), "executions")
        if kwargs.get("fail"):
            raise ValueError("probe failure: " + str(kwargs["fail"]))
        if kwargs.get("sleep"):
            time.sleep(float(kwargs["sleep"]))
        return {
            "plugin": self.name,
            "args": list(args),
            "kwargs": kwargs,
            "greeting": self._config.get("greeting"),
            "pid": os.getpid(),
        }
'''

PROBE_CONFIG_SCHEMA = {"type": "object", "properties": {"greeting": {"type": "string", "default": "hi"}}}


def plugin_manifest(
    name: str,
    *,
    module: str,
    cls: str,
    resources: Mapping[str, Any],
    env: Mapping[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A cjm manifest for a plugin whose source ``running_cjm_host`` writes; the
    worker runs this interpreter with the source dir on its ``PYTHONPATH``."""
    return {
        "name": name,
        "version": "1.0.0",
        "category": "test",
        "python_path": sys.executable,
        "module": module,
        "class": cls,
        "env_vars": {"PYTHONDONTWRITEBYTECODE": "1", **(env or {})},
        "resources": dict(resources),
        **fields,
    }


def probe_manifest(name: str, resources: Mapping[str, Any], *, module: str, description: str) -> dict[str, Any]:
    """The manifest of a ``PROBE_PLUGIN_SOURCE`` plugin called ``name``."""
    return plugin_manifest(
        name,
        module=module,
        cls="ProbePlugin",
        resources=resources,
        env={"PROBE_NAME": name},
        description=description,
        config_schema=PROBE_CONFIG_SCHEMA,
    )


@contextmanager
def running_cjm_host(
    root: Path,
    *,
    sources: Mapping[str, str],
    manifests: Sequence[Mapping[str, Any]],
    scheduler: Any,
    configs: Mapping[str, Any] | None = None,
    before_load: Callable[[Path], None] | None = None,
) -> Iterator[SimpleNamespace]:
    """A ``PluginManager`` over ``root`` with every plugin of ``manifests`` loaded
    in its worker; ``sources`` are written (file name → text) where the workers
    import them. ``before_load(manifests_dir)`` may add manifests of its own.

    Yields ``SimpleNamespace(manager, root, data_dir, manifests_dir, probe, procs)``
    (``probe``: an ``httpx.Client`` for reading worker state directly)."""
    import httpx
    from cjm_plugin_system.core import config as cjm_config
    from cjm_plugin_system.core.manager import PluginManager

    data_dir, manifests_dir, src_dir = root / "cjm_data", root / "manifests", root / "plugin_src"
    for d in (data_dir, manifests_dir, src_dir):
        d.mkdir()
    for filename, text in sources.items():
        (src_dir / filename).write_text(text)
    pythonpath = os.pathsep.join(p for p in [str(src_dir), os.environ.get("PYTHONPATH", "")] if p)
    for manifest in manifests:
        manifest = {**manifest, "env_vars": {**manifest.get("env_vars", {}), "PYTHONPATH": pythonpath}}
        (manifests_dir / f"{manifest['name']}.json").write_text(json.dumps(manifest))
    if before_load is not None:
        before_load(manifests_dir)

    mp = pytest.MonkeyPatch()
    manager = None
    procs: list[Any] = []
    probe = httpx.Client(trust_env=False, timeout=10)
    leaked: list[int] = []
    try:
        mp.setenv("CJM_DATA_DIR", str(data_dir))  # logs_dir / plugin_data_dir -> tmp
        mp.delenv("CJM_CONDA_PREFIX", raising=False)
        mp.delenv("CJM_CONDA_TYPE", raising=False)
        for var in ("NO_PROXY", "no_proxy"):  # the proxies' httpx clients talk to 127.0.0.1
            mp.setenv(var, "127.0.0.1,localhost")
        mp.chdir(root)  # no stray ./cjm.yaml or ./.cjm/manifests; worker cwd is tmp too
        cjm_config.reset_config()
        assert cjm_config.get_config().data_dir == data_dir

        manager = PluginManager(search_paths=[manifests_dir], scheduler=scheduler)
        results = manager.load_all(configs=dict(configs)) if configs is not None else manager.load_all()
        procs = [m.instance.process for m in manager.plugins.values() if m.instance is not None]
        expected = {p.stem: True for p in manifests_dir.glob("*.json")}
        assert results == expected, results
        yield SimpleNamespace(
            manager=manager, root=root, data_dir=data_dir, manifests_dir=manifests_dir, probe=probe, procs=procs
        )
    finally:
        try:
            if manager is not None:
                # Scripted stats providers the tests injected on the instance.
                for name in ("_get_global_stats", "_get_global_stats_async"):
                    manager.__dict__.pop(name, None)
                manager.unload_all()
        finally:
            for p in procs:  # never leave a worker behind
                if p is not None and p.poll() is None:
                    leaked.append(p.pid)
                    p.kill()
                    p.wait(timeout=10)
            probe.close()
            cjm_config.reset_config()
            mp.undo()
    assert not leaked, f"workers still running after unload_all: {leaked}"
