"""Real ``assent serve`` processes for the tests, PostgreSQL databases and Redis prefixes of
their own, and a TCP proxy that cuts connections on demand. No mocks: what the client talks to
is the server as it runs in production.

The server binary is ``ASSENT_BIN`` (default ``target/debug/assent`` of the repository).
PostgreSQL is the server ``ASSENT_TEST_DATABASE_URL`` names (default
``postgres://assent:assent@127.0.0.1:5432/postgres``, a role allowed to create databases) and
Redis the one ``ASSENT_TEST_REDIS_URL`` names (default ``redis://127.0.0.1:6379``), as for the
Rust tests.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import urllib.request
import uuid
from pathlib import Path
from typing import Iterable, Sequence

from assent_client import Client, pb

REPOSITORY = Path(__file__).resolve().parents[3]
DEFAULT_ADMIN_URL = "postgres://assent:assent@127.0.0.1:5432/postgres"
#: The Redis entry key every replica of a cluster shares, as a deployment's do (32+ characters).
ENTRY_KEY = "the redis entry key of the python client tests"


def assent_binary() -> Path:
    given = os.environ.get("ASSENT_BIN")
    binary = Path(given) if given else REPOSITORY / "target" / "debug" / "assent"
    if not binary.is_absolute():
        binary = (Path.cwd() / binary).resolve()
    if not binary.is_file():
        raise RuntimeError(
            f"no assent binary at {binary}: run `cargo build --bin assent` or set ASSENT_BIN"
        )
    return binary


class Server:
    """An ``assent serve`` process on free ports of loopback, with JSON logs."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        settings = dict(settings or {})
        self._data = tempfile.TemporaryDirectory(prefix="assent-pytest-")
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("ASSENT_")
        }
        environment.update(
            {
                "ASSENT_LISTEN": "127.0.0.1:0",
                "ASSENT_ADMIN_LISTEN": "127.0.0.1:0",
                "ASSENT_LOG_FORMAT": "json",
                "ASSENT_DATA_DIR": self._data.name,
                # Tests write as fast as they can, as one caller.
                "ASSENT_WRITES_PER_SECOND_PER_CALLER": "0",
                "RUST_LOG": "info",
            }
        )
        environment.update(settings)
        self.settings = settings
        self._log: collections.deque[str] = collections.deque(maxlen=200)
        self._process = subprocess.Popen(
            [str(assent_binary()), "serve"],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started = threading.Event()
        addresses: dict[str, str] = {}

        def read_log() -> None:
            # Reads the bound addresses, then keeps draining so the server never blocks on a
            # full pipe.
            assert self._process.stderr is not None
            for line in self._process.stderr:
                self._log.append(line.rstrip())
                if started.is_set():
                    continue
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue
                if entry.get("message") == "assent serving":
                    addresses["address"] = entry["address"]
                    addresses["admin"] = entry.get("admin", "")
                    started.set()

        threading.Thread(target=read_log, name="assent-log", daemon=True).start()
        if not started.wait(30):
            self.kill()
            raise RuntimeError("the server did not start within 30 s:\n" + self.log_tail())
        self.address = addresses["address"]
        self.admin = addresses["admin"]

    @property
    def pid(self) -> int:
        return self._process.pid

    def running(self) -> bool:
        return self._process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(list(self._log)[-lines:])

    def stop(self) -> None:
        """SIGTERM, then wait for the graceful exit (SIGKILL after 20 s)."""
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(20)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._data.cleanup()

    def kill(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._data.cleanup()

    def metrics(self) -> dict[str, float]:
        """The samples of the admin port's ``/metrics``, by ``name{labels}``."""
        with urllib.request.urlopen(f"http://{self.admin}/metrics", timeout=5) as response:
            text = response.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            try:
                samples[series] = float(value)
            except ValueError:
                pass
        return samples

    def calls(self, method: str, code: str = "OK") -> float:
        """How many calls of ``method`` (``assent.v1.Decisions/Check``) ended with ``code``."""
        series = f'assent_grpc_requests_total{{method="{method}",code="{code}"}}'
        return self.metrics().get(series, 0.0)


def admin_url() -> str:
    return os.environ.get("ASSENT_TEST_DATABASE_URL") or DEFAULT_ADMIN_URL


def redis_url() -> str:
    return os.environ.get("ASSENT_TEST_REDIS_URL") or "redis://127.0.0.1:6379"


def _with_database(url: str, name: str) -> str:
    scheme, _, rest = url.partition("://")
    authority, slash, after = rest.partition("/")
    query = after[after.index("?") :] if "?" in after else ""
    return f"{scheme}://{authority}/{name}{query}"


def _psql(sql: str) -> None:
    subprocess.run(
        ["psql", admin_url(), "-v", "ON_ERROR_STOP=1", "-qAtc", sql],
        check=True,
        stdout=subprocess.DEVNULL,
        timeout=60,
    )


class Database:
    """A PostgreSQL database made for one test module, dropped afterwards."""

    def __init__(self) -> None:
        self.name = f"assent_pytest_{uuid.uuid4().hex}"
        try:
            _psql(f"CREATE DATABASE {self.name}")
        except (OSError, subprocess.CalledProcessError) as error:
            raise RuntimeError(
                f"cannot create a database on {admin_url()} ({error}): scripts/ensure-postgres "
                "starts PostgreSQL with the test role"
            ) from error
        self.url = _with_database(admin_url(), self.name)

    def drop(self) -> None:
        _psql(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")


def forget_redis_prefix(prefix: str) -> None:
    """Deletes the keys under ``prefix`` (best effort: they expire anyway)."""
    try:
        keys = subprocess.run(
            ["redis-cli", "-u", redis_url(), "--scan", "--pattern", f"{prefix}*"],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        for start in range(0, len(keys), 500):
            subprocess.run(
                ["redis-cli", "-u", redis_url(), "DEL", *keys[start : start + 500]],
                check=False,
                capture_output=True,
                timeout=30,
            )
    except (OSError, subprocess.SubprocessError):
        pass


class Cluster:
    """Replicas of one deployment: one PostgreSQL database, one Redis prefix, shared by every
    replica (as tests/replicas/main.rs starts them)."""

    def __init__(self, replicas: int = 2, settings: dict[str, str] | None = None) -> None:
        self.database = Database()
        self.prefix = f"assent-pytest-{uuid.uuid4().hex}"
        self.settings = {
            "ASSENT_DATABASE_URL": self.database.url,
            "ASSENT_DECISION_LOG": "off",
            "ASSENT_CHANGE_POLL_INTERVAL_MS": "100",
            "ASSENT_REDIS_URL": redis_url(),
            "ASSENT_REDIS_PREFIX": self.prefix,
            "ASSENT_REDIS_ENTRY_KEY": ENTRY_KEY,
            # A Check's store read gets more than the production 50 ms before it is answered
            # degraded: this 2-core machine runs the replicas, PostgreSQL and the test at once.
            "ASSENT_STORE_READ_TIMEOUT_MS": "2000",
            **(settings or {}),
        }
        self.replicas: list[Server] = []
        try:
            for _ in range(replicas):
                self.add_replica()
        except BaseException:
            self.stop()
            raise

    def add_replica(self) -> Server:
        server = Server(self.settings)
        self.replicas.append(server)
        return server

    def stop(self) -> None:
        for server in self.replicas:
            server.stop()
        self.replicas.clear()
        try:
            self.database.drop()
        finally:
            forget_redis_prefix(self.prefix)


class FaultProxy:
    """A TCP proxy in front of ``target`` that forwards, swallows or resets on demand.

    - ``forward()``: bytes pass both ways (connections that swallowed anything are reset
      first: their streams lost bytes and cannot go on);
    - ``swallow()``: every connection, open or new, is accepted and read but nothing is
      forwarded either way: nothing is refused and nothing comes back, as on a black-holed path;
    - ``reset()``: every open connection is closed and new ones are closed as soon as accepted.
    """

    FORWARD = "forward"
    SWALLOW = "swallow"
    RESET = "reset"

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._mode = self.FORWARD
        self._lock = threading.Lock()
        self._connections: list[_Connection] = []
        self._closed = False
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def mode(self) -> str:
        return self._mode

    def forward(self) -> None:
        with self._lock:
            self._mode = self.FORWARD
            broken = [connection for connection in self._connections if connection.swallowed]
        for connection in broken:
            connection.close()

    def swallow(self) -> None:
        with self._lock:
            self._mode = self.SWALLOW

    def reset(self) -> None:
        with self._lock:
            self._mode = self.RESET
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def close(self) -> None:
        self._closed = True
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            connection.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = self._mode
            if mode == self.RESET:
                _hard_close(client)
                continue
            upstream = None
            if mode == self.FORWARD:
                try:
                    upstream = socket.create_connection(self._target, timeout=5)
                    upstream.settimeout(None)
                    upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                except OSError:
                    _hard_close(client)
                    continue
            connection = _Connection(self, client, upstream)
            with self._lock:
                self._connections.append(connection)
            connection.start()

    def _forget(self, connection: "_Connection") -> None:
        with self._lock:
            if connection in self._connections:
                self._connections.remove(connection)


class _Connection:
    def __init__(
        self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket | None
    ) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.swallowed = upstream is None
        self._closed = False

    def start(self) -> None:
        threading.Thread(target=self._pump, args=(self.client, self.upstream), daemon=True).start()
        if self.upstream is not None:
            threading.Thread(
                target=self._pump, args=(self.upstream, self.client), daemon=True
            ).start()

    def _pump(self, source: socket.socket, destination: socket.socket | None) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if self.proxy.mode == FaultProxy.FORWARD and not self.swallowed and destination:
                    destination.sendall(data)
                else:
                    self.swallowed = True
        except OSError:
            pass
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for sock in (self.client, self.upstream):
            if sock is not None:
                _hard_close(sock)
        self.proxy._forget(self)


def _hard_close(sock: socket.socket) -> None:
    """Closes with a reset, waking any thread blocked reading it."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass


# --- writes -----------------------------------------------------------------------------------


def actor() -> pb.Actor:
    return pb.Actor(operator_id="python-client-tests")


def upsert(client: Client, subject_id: str, plan: int = pb.PLAN_FREE) -> str:
    """Creates (or changes) a subject; the write's revision."""
    written = client.subjects.UpsertSubject(
        pb.UpsertSubjectRequest(subject_id=subject_id, plan=plan, actor=actor())
    )
    return written.revision  # type: ignore[no-any-return]


def set_choice(
    client: Client,
    subject_id: str,
    purpose: int,
    choice: int,
    expires_at: float | None = None,
) -> pb.WriteResponse:
    """A user's choice, expiring at ``expires_at`` (seconds since the epoch) when given."""
    request = pb.SetChoiceRequest(
        subject_id=subject_id, purpose=purpose, choice=choice, actor=actor()
    )
    if expires_at is not None:
        request.expires_at.FromNanoseconds(int(expires_at * 1e9))
    return client.subjects.SetChoice(request)  # type: ignore[no-any-return]


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    return sorted_values[round((len(sorted_values) - 1) * fraction)]


def milliseconds(values: Iterable[float]) -> str:
    return ", ".join(f"{value * 1000:.1f} ms" for value in values)
