"""`moa up` / `moa down` / `moa status`: the embedded services, migrations and worker pools."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from urllib.parse import urlparse

from moa.services import LocalModel, Managed, Postgres, Valkey
from moa.settings import Settings
from pipeline.specs import Config, PresetSpec

WORKER_POOLS = ("proposers", "aggregators", "control")
SERVERS = ("api", "flower", "beat")  # beat: the pipelines' schedules


def flower_credentials(settings: Settings) -> tuple[str, str, bool]:
    """(user, password, made now): from MOA_FLOWER_USER/PASSWORD, or made once and kept
    (mode 600) under MOA_HOME."""
    if settings.flower_user and settings.flower_password:
        return settings.flower_user, settings.flower_password, False
    path = settings.home / "flower.credentials"
    made = not path.exists()
    if made:
        settings.home.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(f"moa:{secrets.token_urlsafe(16)}")
    user, _, password = path.read_text().strip().partition(":")
    return user, password, made


@dataclass(frozen=True)
class Stack:
    settings: Settings

    @property
    def postgres(self) -> Postgres:
        return Postgres(self.settings.home, self.settings.pg_port)

    @property
    def valkey(self) -> Valkey:
        return Valkey(self.settings.home, self.settings.redis_port)

    def worker(self, pool: str) -> Managed:
        return Managed(f"worker-{pool}", self.settings.home)

    def local_model(self, config: Config) -> LocalModel | None:
        for provider in config.providers.values():
            if provider.local:
                port = urlparse(provider.base_url).port or 80
                return LocalModel(self.settings.home, port, self.settings.local_model_threads)
        return None

    def up(self, *, workers: bool = True) -> None:
        from db.migrate import upgrade

        if self.settings.embedded_database:
            self.postgres.start()
        if self.settings.embedded_redis:
            self.valkey.start()
        upgrade(self.settings.effective_database_url)
        if workers:
            for pool in WORKER_POOLS:
                self.worker(pool).start(
                    [sys.executable, "-m", "moa.cli", "worker", "--pool", pool],
                    env=self.worker_env(),
                )
            for server in SERVERS:
                self.server(server).start(
                    [sys.executable, "-m", "moa.cli", server], env=self.worker_env()
                )

    def server(self, name: str) -> Managed:
        return Managed(name, self.settings.home)

    def worker_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["MOA_DATABASE_URL"] = self.settings.effective_database_url
        env["MOA_REDIS_URL"] = self.settings.effective_redis_url
        env["MOA_HOME"] = str(self.settings.home)
        return env

    def ensure_local_model(self, config: Config, preset: PresetSpec) -> None:
        if not any(config.provider_for(m).local for m in preset.model_names()):
            return
        model = self.local_model(config)
        if model is not None:
            model.start()

    def down(self, config: Config) -> list[str]:
        stopped = [f"worker-{p}" for p in WORKER_POOLS if self.worker(p).stop()]
        stopped += [name for name in SERVERS if self.server(name).stop()]
        model = self.local_model(config)
        if model is not None and model.stop():
            stopped.append("local-model")
        if self.valkey.stop():
            stopped.append("valkey")
        if self.postgres.stop():
            stopped.append("postgres")
        return stopped

    def status(self, config: Config) -> list[tuple[str, str, str]]:
        """(name, state, where) for every part."""
        s = self.settings
        rows = [
            _row(
                "postgres", self.postgres.running(), s.effective_database_url, s.embedded_database
            ),
            _row("valkey", self.valkey.running(), s.effective_redis_url, s.embedded_redis),
        ]
        model = self.local_model(config)
        if model is not None:
            rows.append(_row("local-model", model.running(), f"127.0.0.1:{model.port}", True))
        for pool in WORKER_POOLS:
            managed = self.worker(pool)
            rows.append(_row(f"worker-{pool}", managed.running(), f"pid {managed.pid()}", True))
        api = self.server("api")
        rows.append(_row("api", api.running(), f"http://{s.api_host}:{s.api_port}", True))
        flower = self.server("flower")
        rows.append(_row("flower", flower.running(), f"http://127.0.0.1:{s.flower_port}", True))
        beat = self.server("beat")
        rows.append(_row("beat", beat.running(), f"pid {beat.pid()}", True))
        return rows


def _row(name: str, running: bool, where: str, embedded: bool) -> tuple[str, str, str]:
    if not embedded:
        return (name, "external", _redact(where))
    return (name, "running" if running else "stopped", _redact(where))


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
