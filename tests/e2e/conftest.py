"""The API as a real `moa api` process on loopback, and keys for fresh tenants."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from sqlalchemy.orm import Session

from moa.services import free_port
from tests.conftest import ROOT, WEBHOOK_SECRET, wait_for

RATE_LIMIT = 240  # per key and minute in the test API


@dataclass(frozen=True)
class Api:
    url: str

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30)


@pytest.fixture(scope="session")
def api_server(services, workers, config_file) -> Iterator[Api]:
    port = free_port()
    env = services.env(
        MOA_CONFIG=str(config_file),
        MOA_WEBHOOK_SECRET=WEBHOOK_SECRET,
        MOA_API_RATE_LIMIT=f"{RATE_LIMIT}/minute",
        MOA_MAX_REQUEST_BYTES="2000000",
    )
    log = (services.home / "api.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moa.cli", "api", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
    )  # fmt: skip
    log.close()
    api = Api(f"http://127.0.0.1:{port}")
    try:
        wait_for(lambda: _up(api), 30, "the API to answer /healthz")
        yield api
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _up(api: Api) -> bool:
    try:
        return httpx.get(api.url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def new_key(engine) -> Callable[[], tuple[str, str]]:
    """A key for a brand-new tenant: (tenant, key)."""
    from db.keys import create_key

    def make() -> tuple[str, str]:
        tenant = f"team-{uuid.uuid4().hex[:8]}"
        with Session(engine) as session:
            key = create_key(session, tenant)
            session.commit()
        return tenant, key

    return make
