"""Fixtures of the fault suite: a simulator of each test's own and a job starter on it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from moa.simulator import SimConfig, SimServer
from pipeline.specs import load_config
from tests.conftest import ROOT, Services, WorkerPools, questions, start_job
from tests.faults.common import CONFIG, ITEMS


@pytest.fixture
def slow_sim() -> Iterator[SimServer]:
    """A simulator of its own per test, so its request counts are this test's alone."""
    with SimServer(SimConfig(latency_ms=200)) as server:
        yield server


@pytest.fixture
def start(
    engine: Engine, workers: WorkerPools, slow_sim: SimServer, tmp_path: Path
) -> Callable[[str], int]:
    path = tmp_path / "moa.toml"
    path.write_text(CONFIG.replace("SIM_URL", slow_sim.base_url), encoding="utf-8")
    config = load_config(path)

    def _start(prefix: str) -> int:
        return start_job(engine, config, "lite", questions(ITEMS, prefix))

    return _start


@pytest.fixture(scope="module")
def beat(services: Services) -> Iterator[None]:
    """Celery beat, as `moa up` runs it, sweeping every 2 s for items quiet for 10 s."""
    log = (services.home / "beat.log").open("ab")
    env = services.env(MOA_SWEEP_INTERVAL_S="2", MOA_STALL_AFTER_S="10")
    proc = subprocess.Popen([sys.executable, "-m", "moa.cli", "beat"], stdout=log,
                            stderr=subprocess.STDOUT, env=env, cwd=ROOT)  # fmt: skip
    log.close()
    yield
    proc.terminate()
    proc.wait(timeout=20)
