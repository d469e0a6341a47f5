"""A real Synapse homeserver for the Matrix tests: 127.0.0.1, a free port, SQLite.

Started once per test session as a subprocess (matrix-synapse is a dev dependency, nothing is
installed at run time); users are registered through the shared-secret admin API.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SERVER_NAME = "beseda.test"
SHARED_SECRET = "beseda-test-shared-secret"
STARTUP_SECONDS = 60.0

CONFIG = """\
server_name: "{server_name}"
pid_file: "{folder}/homeserver.pid"
listeners:
  - port: {port}
    bind_addresses: ["127.0.0.1"]
    type: http
    tls: false
    x_forwarded: false
    resources:
      - names: [client]
        compress: false
database:
  name: sqlite3
  args:
    database: "{folder}/homeserver.db"
log_config: "{folder}/log.yaml"
media_store_path: "{folder}/media"
signing_key_path: "{folder}/signing.key"
report_stats: false
registration_shared_secret: "{secret}"
enable_registration: false
bcrypt_rounds: 4
trusted_key_servers: []
suppress_key_server_warning: true
presence:
  enabled: false
url_preview_enabled: false
rc_message: {{per_second: 1000, burst_count: 1000}}
rc_registration: {{per_second: 1000, burst_count: 1000}}
rc_login:
  address: {{per_second: 1000, burst_count: 1000}}
  account: {{per_second: 1000, burst_count: 1000}}
  failed_attempts: {{per_second: 1000, burst_count: 1000}}
rc_joins:
  local: {{per_second: 1000, burst_count: 1000}}
  remote: {{per_second: 1000, burst_count: 1000}}
rc_invites:
  per_room: {{per_second: 1000, burst_count: 1000}}
  per_user: {{per_second: 1000, burst_count: 1000}}
  per_issuer: {{per_second: 1000, burst_count: 1000}}
rc_key_requests: {{per_second: 1000, burst_count: 1000}}
"""

LOG_CONFIG = """\
version: 1
formatters:
  precise:
    format: "%(asctime)s %(name)s %(levelname)s %(message)s"
handlers:
  file:
    class: logging.FileHandler
    formatter: precise
    filename: "{folder}/homeserver.log"
root:
  level: WARNING
  handlers: [file]
disable_existing_loggers: false
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Synapse:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = folder / "homeserver.yaml"
        self._process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            CONFIG.format(
                server_name=SERVER_NAME, folder=folder, port=self.port, secret=SHARED_SECRET
            ),
            encoding="utf-8",
        )
        (folder / "log.yaml").write_text(LOG_CONFIG.format(folder=folder), encoding="utf-8")
        subprocess.run(
            [*self._command(), "--generate-keys"],
            check=True,
            capture_output=True,
        )

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "synapse.app.homeserver", "-c", str(self.config)]

    def start(self) -> None:
        output = (self.folder / "stdout.log").open("ab")
        self._process = subprocess.Popen(
            self._command(),
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=self.folder,
        )
        output.close()
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Synapse exited: see {self.folder}/stdout.log")
            try:
                if self._call("GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"Synapse did not become healthy: see {self.folder}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _call(self, method: str, path: str, body: Any = None, token: str = "") -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(body).encode() if body is not None else None
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=data, headers=headers)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def request(self, method: str, path: str, body: Any = None, token: str = "") -> Any:
        """A JSON request to the homeserver; anything but 200 fails the test."""
        status, data = self._call(method, path, body, token)
        if status != 200:
            raise AssertionError(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data or b"{}")

    def register(self, localpart: str, password: str, *, admin: bool = False) -> dict[str, Any]:
        """A user through the shared-secret registration API (HMAC-SHA1 over the fields)."""
        path = "/_synapse/admin/v1/register"
        nonce = self.request("GET", path)["nonce"]
        digest = hmac.new(
            SHARED_SECRET.encode(),
            "\x00".join([nonce, localpart, password, "admin" if admin else "notadmin"]).encode(),
            hashlib.sha1,
        ).hexdigest()
        body = {
            "nonce": nonce,
            "username": localpart,
            "password": password,
            "admin": admin,
            "mac": digest,
        }
        result: dict[str, Any] = self.request("POST", path, body)
        return result

    def devices(self, token: str) -> list[str]:
        """The device ids of the user whose access token this is."""
        reply = self.request("GET", "/_matrix/client/v3/devices", token=token)
        return sorted(device["device_id"] for device in reply["devices"])
