"""All runtime settings in one place: environment variables prefixed ``MOA_``.

Core functions take plain values; only entry points (CLI, worker start-up,
Alembic's env.py, the API) call :func:`get_settings`.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.specs import Config, check_references, load_config, merge_config

PACKAGED_CONFIG = Path(__file__).with_name("moa.toml")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MOA_", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".moa", description="state directory of the embedded services"
    )
    database_url: str | None = Field(default=None, description="use this PostgreSQL and start none")
    redis_url: str | None = Field(default=None, description="use this Redis/Valkey and start none")
    config: Path | None = Field(
        default=None, description="moa.toml; default ./moa.toml, else the packaged one"
    )

    pg_port: int = 55432
    redis_port: int = 56379
    local_model_threads: int = 2

    proposer_concurrency: int = 16
    aggregator_concurrency: int = 8
    control_concurrency: int = 4
    max_in_flight_per_job: int = 64
    max_items: int = 1_000_000  # per job
    max_prompt_chars: int = 100_000  # per item
    visibility_timeout_s: int = 3600
    # Beat's sweeper restarts an in-progress item nothing has moved for stall_after_s: the
    # rare message Redis loses (a worker killed between taking it and recording it) or a
    # broker restart drops. Keyed calls make a restart of a live item harmless, only wasteful.
    sweep_interval_s: float = 60.0
    stall_after_s: float = 900.0
    log_level: str = "INFO"
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    api_rate_limit: str = "600/minute"  # per API key
    max_request_bytes: int = 50_000_000  # a JSON or JSONL job submission
    webhook_secret: str | None = None  # signs webhook deliveries (HMAC-SHA256)
    flower_host: str = "127.0.0.1"
    flower_port: int = 5555
    flower_user: str | None = None
    flower_password: str | None = None
    # Task events feed Flower; each task then also publishes a few small messages.
    task_events: bool = True
    # A log line per task received and done: noise at thousands a second, and CPU.
    log_each_task: bool = False

    @property
    def embedded_database(self) -> bool:
        return self.database_url is None

    @property
    def embedded_redis(self) -> bool:
        return self.redis_url is None

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.pg_port}/moa"

    @property
    def effective_redis_url(self) -> str:
        return self.redis_url or f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def config_path(self) -> Path:
        if self.config is not None:
            return self.config
        local = Path.cwd() / "moa.toml"
        return local if local.exists() else PACKAGED_CONFIG


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def load_moa_config(settings: Settings, extra: Path | None = None) -> Config:
    """The packaged moa.toml, then the user's (./moa.toml or MOA_CONFIG), then ``extra``."""
    config = load_config(PACKAGED_CONFIG)
    for path in (settings.config_path, extra):
        if path is not None and path.resolve() != PACKAGED_CONFIG.resolve():
            config = merge_config(config, load_config(path))
    check_references(config)
    return config
