"""Fixtures on real parts: embedded PostgreSQL and Valkey, real Celery worker processes,
and the loopback LLM simulator (the only double, at the HTTP seam).

Set MOA_TEST_DATABASE_URL / MOA_TEST_REDIS_URL to run against servers of your own.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from redis import Redis
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from moa.services import Postgres, Valkey, free_port
from moa.simulator import SimConfig, SimServer

ROOT = Path(__file__).resolve().parent.parent
# A recognisable provider key, given to the workers only through their environment.
# Every fault kind the simulator injects, equally likely: a provider storm.
MIXED = {"429": 1, "500": 1, "503": 1, "malformed": 1, "disconnect": 1, "slow": 1, "hang": 1}
FAKE_KEY_ENV = "MOA_TEST_PROVIDER_KEY"
FAKE_KEY = "sk-moatest-8c1f0e7d2b9a4c35b6e1d0f9a8b7c6d5"
WEBHOOK_SECRET = "whsec-test-4b1d2c"


@dataclass(frozen=True)
class Services:
    database_url: str
    redis_url: str
    home: Path
    # The embedded servers when the fixture started them (None for servers of your own).
    postgres: Postgres | None = None
    valkey: Valkey | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            MOA_DATABASE_URL=self.database_url,
            MOA_REDIS_URL=self.redis_url,
            MOA_HOME=str(self.home),
            **extra,
        )
        return env


def wait_for(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll a condition until it holds (returns a truthy value) or fail after the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@pytest.fixture(scope="session")
def services() -> Iterator[Services]:
    home = Path(tempfile.mkdtemp(prefix="moa-test-"))
    started: list[Postgres | Valkey] = []
    database_url = os.environ.get("MOA_TEST_DATABASE_URL")
    redis_url = os.environ.get("MOA_TEST_REDIS_URL")
    postgres = valkey = None
    if not database_url:
        postgres = Postgres(home, free_port())
        postgres.start()
        started.append(postgres)
        database_url = postgres.url
    if not redis_url:
        valkey = Valkey(home, free_port())
        valkey.start()
        started.append(valkey)
        redis_url = valkey.url
    from db.migrate import upgrade

    upgrade(database_url)
    found = Services(database_url, redis_url, home, postgres, valkey)
    saved = {k: os.environ.get(k) for k in ("MOA_DATABASE_URL", "MOA_REDIS_URL", "MOA_HOME")}
    os.environ.update(MOA_DATABASE_URL=database_url, MOA_REDIS_URL=redis_url, MOA_HOME=str(home))
    _configure_settings()
    yield found
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for service in reversed(started):
        service.stop()
    shutil.rmtree(home, ignore_errors=True)


def _configure_settings() -> None:
    from moa.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()
    from workers.app import app

    # The app may have been imported before the URLs were known.
    app.conf.update(
        broker_url=settings.effective_redis_url, result_backend=settings.effective_redis_url
    )


@pytest.fixture(scope="session")
def engine(services: Services) -> Iterator[Engine]:
    from db.engine import make_engine

    engine = make_engine(services.database_url, pool_size=2)
    yield engine
    engine.dispose()


@pytest.fixture
def db(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture(scope="session")
def sim() -> Iterator[SimServer]:
    with SimServer(SimConfig(seed=7)) as server:
        yield server


@pytest.fixture(scope="session")
def dead_port() -> int:
    """A loopback port nothing listens on: connection refused, at once."""
    return free_port()


@pytest.fixture(scope="session")
def config_file(sim: SimServer, dead_port: int, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("config") / "moa.toml"
    path.write_text(
        TEST_CONFIG.replace("SIM_URL", sim.base_url).replace("DEAD_PORT", str(dead_port)),
        encoding="utf-8",
    )
    return path


TEST_CONFIG = """
[providers.sim]
base_url = "SIM_URL"
timeout_s = 10

[providers.dead]
base_url = "http://127.0.0.1:DEAD_PORT/v1"
timeout_s = 2
max_attempts = 1
breaker_threshold = 0  # these tests are about quorum; the breaker has its own

[models.proposer]
provider = "sim"
model = "sim-proposer"
input_per_1m = "1.00"
output_per_1m = "2.00"

[models.aggregator]
provider = "sim"
model = "sim-aggregator"
input_per_1m = "3.00"
output_per_1m = "6.00"

[models.dead]
provider = "dead"
model = "dead-model"

[presets.lite]
aggregator = "aggregator"
[[presets.lite.layers]]
agents = [{ model = "proposer", samples = 3 }]
[[presets.lite.layers]]
agents = [{ model = "proposer", samples = 3 }]

[presets.one]
aggregator = "aggregator"

[presets.quorum]
aggregator = "aggregator"
[[presets.quorum.layers]]
agents = ["proposer", "dead", "dead"]
min_ok = 2

[models.cachey]
provider = "sim"
model = "sim-cache"
input_per_1m = "1.00"
output_per_1m = "1.00"

[models.tiny]
provider = "sim"
model = "sim-tiny"
context_window = 50

[presets.cached]
aggregator = { model = "cachey", temperature = 0.0 }

[presets.tiny]
aggregator = { model = "tiny", max_tokens = 40 }

[presets.degraded]
aggregator = "aggregator"
[[presets.degraded.layers]]
agents = ["proposer", "dead", "dead"]
min_ok = 1
"""


@pytest.fixture(scope="session")
def config(config_file: Path) -> Any:
    from pipeline.specs import load_config

    return load_config(config_file)


class WorkerPools:
    """The three worker pools as real `moa worker` processes."""

    def __init__(self, services: Services):
        self.services = services
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self, pool: str, name: str | None = None, concurrency: int | None = None, **env_extra: str
    ) -> None:
        name = name or pool
        log = (self.services.home / f"worker-{name}.log").open("ab")
        env = self.services.env(
            MOA_PROPOSER_CONCURRENCY="8",
            MOA_AGGREGATOR_CONCURRENCY="4",
            MOA_WEBHOOK_SECRET=WEBHOOK_SECRET,
            **{FAKE_KEY_ENV: FAKE_KEY, **env_extra},
        )
        threads = ["--concurrency", str(concurrency)] if concurrency else []
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "moa.cli", "worker", "--pool", pool, *threads],
            stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
        log.close()

    def all_answer(self) -> bool:
        """Every process of every pool answers a ping (worker names are POOL-PID@host)."""
        from workers.app import app

        pids = {str(proc.pid) for proc in self.procs.values()}
        replies = app.control.ping(timeout=0.5) or []
        seen = {name.split("@")[0].rsplit("-", 1)[-1] for reply in replies for name in reply}
        return seen >= pids

    def wait_ready(self, timeout_s: float = 60) -> None:
        wait_for(self.all_answer, timeout_s, f"worker pools {sorted(self.procs)} to answer a ping")

    def kill(self, pool: str) -> int:
        """SIGKILL every process of a pool, as a crash would; returns how many."""
        victims = [n for n in self.procs if n == pool or n.startswith(f"{pool}-")]
        for name in victims:
            proc = self.procs.pop(name)
            proc.kill()
            proc.wait()
        return len(victims)

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="session")
def workers(services: Services) -> Iterator[WorkerPools]:
    pools = WorkerPools(services)
    for pool in ("proposers", "aggregators", "control"):
        pools.start(pool)
    try:
        pools.wait_ready()
        yield pools
    finally:
        pools.stop()


def start_job(
    engine: Engine, config: Any, preset: str, rows: list[dict[str, Any]], **options: Any
) -> int:
    """Create a job from rows (dicts) and dispatch it, as `moa run` and the API do."""
    import json

    from moa.jobs import JobOptions, create_job
    from workers.tasks import dispatch

    lines = [json.dumps(row) for row in rows]
    with Session(engine) as session:
        job_id = create_job(session, config, preset, lines, JobOptions(**options)).job.id
        session.commit()
    dispatch.delay(job_id)
    return job_id


def questions(n: int, prefix: str = "q") -> list[dict[str, Any]]:
    return [{"custom_id": f"{prefix}{i}", "prompt": f"{prefix} question {i}"} for i in range(n)]


@pytest.fixture
def submit(engine: Engine, config: Any, workers: WorkerPools) -> Callable[..., int]:
    """Start a job on a preset of the test config."""

    def _submit(rows: list[dict[str, Any]], preset: str = "lite", **options: Any) -> int:
        return start_job(engine, config, preset, rows, **options)

    return _submit


def job_calls(session: Session, job_id: int) -> list[Any]:
    """Every call row of a job, fresh from the database, in the order they were made."""
    from db.models import Call, Item

    query = select(Call).join(Item, Item.id == Call.item_id).where(Item.job_id == job_id)
    fresh = query.order_by(Call.id).execution_options(populate_existing=True)
    return list(session.scalars(fresh))


def queues_empty(redis_url: str) -> bool:
    from workers.app import AGGREGATE_QUEUE, CONTROL_QUEUE, PROPOSE_QUEUE

    with Redis.from_url(redis_url) as redis:
        return not any(redis.llen(q) for q in (PROPOSE_QUEUE, AGGREGATE_QUEUE, CONTROL_QUEUE))


def unacked(redis_url: str) -> int:
    """Messages a worker took and has not acknowledged (kombu keeps them in this hash)."""
    with Redis.from_url(redis_url) as redis:
        return int(redis.hlen("unacked"))


def redeliver_unacked(redis_url: str) -> None:
    """Put every unacknowledged message back on its queue now, as the visibility timeout
    would later: what a worker took and lost (killed, or cut off from the broker) runs again."""
    from kombu import Connection

    with Connection(redis_url, transport_options={"visibility_timeout": 0}) as conn:
        conn.default_channel.qos.restore_visible(num=100_000)


def drained(services: Services) -> bool:
    """Nothing queued and nothing taken but unacknowledged: every task has run to its end."""
    return queues_empty(services.redis_url) and unacked(services.redis_url) == 0


def wait_job_end(engine: Engine, job_id: int, timeout_s: float = 90) -> Any:
    """Poll the job until it has ended (completed, failed or cancelled); return its row."""
    from db.models import Job
    from db.repo import JOB_ENDED

    def ended() -> Job | None:
        with Session(engine, expire_on_commit=False) as session:
            job = session.get(Job, job_id)
            return job if job is not None and job.status in JOB_ENDED else None

    return wait_for(ended, timeout_s, f"job {job_id} to end")


@pytest.fixture
def wait_job(engine: Engine) -> Callable[..., Any]:
    def _wait(job_id: int, timeout_s: float = 90) -> Any:
        return wait_job_end(engine, job_id, timeout_s)

    return _wait
