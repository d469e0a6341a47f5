"""A loopback stand-in for the Hugging Face hub, enough for huggingface_hub's downloads.

It answers what ``hf_hub_download`` and ``HfApi.model_info`` ask (checked against the
installed huggingface_hub): ``HEAD /{repo}/resolve/{revision}/{file}`` with ``X-Repo-Commit``,
``ETag``/``X-Linked-Etag`` and ``X-Linked-Size``; ``GET`` of the same URL with ``Range`` for
resuming; ``GET /api/models/{repo}/revision/{revision}`` with the file list. Like the hub
for LFS files, ``resolve`` answers 302 to a "CDN" on another host name (``localhost``, the
same server), which is where the bytes come from. It can cut the body of the first download
midway to exercise the resume path.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_CHUNK = 1 << 20


@dataclass
class HubRequest:
    method: str
    path: str
    range: str | None


@dataclass
class FakeHub:
    repo: str
    files: dict[str, bytes]
    cut_first_download: bool = False
    # False: resolve serves the bytes itself, as the hub does for small non-LFS files.
    cdn_redirect: bool = True
    requests: list[HubRequest] = field(default_factory=list)
    # The sha256 model_info announces for a file, where it is not the served bytes' own.
    announced: dict[str, str] = field(default_factory=dict)
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _cut_done: bool = False

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def downloads(self) -> list[HubRequest]:
        """The requests that fetched file bytes."""
        byte_paths = ("/cdn/",) if self.cdn_redirect else ("/resolve/",)
        return [
            r
            for r in self.requests
            if r.method == "GET" and any(part in r.path for part in byte_paths)
        ]

    def cdn_url(self, digest: str) -> str:
        # Another host name for the same server: huggingface_hub treats it as a CDN.
        return self.url.replace("127.0.0.1", "localhost") + f"/cdn/{digest}"

    def should_cut(self) -> bool:
        if self.cut_first_download and not self._cut_done:
            self._cut_done = True
            return True
        return False


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet test output

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, *, body: bool) -> None:
        fake = self.fake
        path = self.path.split("?", 1)[0]
        fake.requests.append(HubRequest(self.command, path, self.headers.get("Range")))
        info = re.fullmatch(r"/api/models/(.+)/revision/([^/]+)", path)
        if info:
            self._model_info(info.group(1), body=body)
            return
        cdn = re.fullmatch(r"/cdn/([0-9a-f]{64})", path)
        if cdn:
            blobs = {_sha(data): data for data in fake.files.values()}
            if cdn.group(1) not in blobs:
                self._error(404, "EntryNotFound", "Blob not found")
                return
            self._file(blobs[cdn.group(1)], body=body)
            return
        resolve = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", path)
        if not resolve or resolve.group(1) != fake.repo:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        data = fake.files.get(resolve.group(3))
        if data is None:
            self._error(404, "EntryNotFound", "Entry not found")
            return
        if fake.cdn_redirect:
            self._redirect(data)
        else:
            self._file(data, body=body)

    def _redirect(self, data: bytes) -> None:
        etag = _sha(data)
        self.send_response(302)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", '"pointer-file-etag"')
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Location", self.fake.cdn_url(etag))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _model_info(self, repo: str, *, body: bool) -> None:
        if repo != self.fake.repo:
            self._error(404, "RepoNotFound", "Repository not found")
            return
        siblings = [
            {
                "rfilename": name,
                "size": len(data),
                "lfs": {
                    "sha256": self.fake.announced.get(name, _sha(data)),
                    "size": len(data),
                    "pointerSize": 134,
                },
            }
            for name, data in self.fake.files.items()
        ]
        payload = json.dumps({"id": repo, "sha": COMMIT, "siblings": siblings}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if body:
            self.wfile.write(payload)

    def _file(self, data: bytes, *, body: bool) -> None:
        etag = _sha(data)
        start = 0
        requested = self.headers.get("Range")
        if body and requested:
            found = re.fullmatch(r"bytes=(\d+)-", requested.strip())
            start = int(found.group(1)) if found else 0
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{etag}"')
        self.send_header("X-Linked-Etag", f'"{etag}"')
        self.send_header("X-Linked-Size", str(len(data)))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        if not body:
            return
        end = len(data)
        cut = self.fake.should_cut()
        if cut:
            end = len(data) // 2
            self.close_connection = True
        for offset in range(start, end, _CHUNK):
            self.wfile.write(data[offset : min(offset + _CHUNK, end)])
        if cut:
            self.wfile.flush()
            self.connection.close()

    def _error(self, status: int, code: str, message: str) -> None:
        payload = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
