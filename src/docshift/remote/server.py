"""The status endpoint of a running migration (``--status-port``).

``GET /status`` (progress as JSON), ``GET /health`` (HEALTHY / DEGRADED answer 200, CRITICAL 503),
and control: ``POST /pause``, ``POST /resume``, ``POST /throttle`` (``{"ops_per_second": N}``, 0 =
no cap) and ``POST /stop`` (graceful: in-flight commits land, checkpoint kept, exit 10).

Why the token rules: anyone who can reach the port can stop or slow a production migration. So the
server binds to 127.0.0.1 unless told otherwise, refuses to bind anywhere else without a token, and
when it has a token checks it on every request (``Authorization: Bearer TOKEN``, compared in
constant time). The token is never logged, echoed or written to a file.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from docshift.engine.controls import Controls
from docshift.errors import UsageError
from docshift.reports.status import RunStatus
from docshift.validators.score import HealthStatus

__all__ = ["StatusServer", "is_loopback"]

_MAX_BODY = 65536


def is_loopback(host: str) -> bool:
    """Whether ``host`` is only reachable from this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], owner: StatusServer) -> None:
        self.owner = owner
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "docshift"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return None  # nothing on stderr: the run's own output stays readable (and no headers logged)

    def _send(self, code: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body, default=str).encode("utf-8")
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def _authorised(self) -> bool:
        token = self.server.owner.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        ok = hmac.compare_digest(value.strip().encode("utf-8"), token.encode("utf-8"))
        if scheme.lower() == "bearer" and ok:
            return True
        self._send(
            401,
            {"error": "a valid token is required (Authorization: Bearer TOKEN)"},
            {"WWW-Authenticate": 'Bearer realm="docshift"'},
        )
        return False

    def do_GET(self) -> None:
        if not self._authorised():
            return
        owner = self.server.owner
        path = urlsplit(self.path).path.rstrip("/") or "/"
        if path == "/status":
            self._send(200, owner.status.snapshot())
        elif path == "/health":
            health = owner.status.health()
            code = 503 if health.status is HealthStatus.CRITICAL else 200
            self._send(
                code,
                {
                    "status": health.status.value,
                    "score": health.score,
                    "reasons": [issue.message for issue in health.issues],
                },
            )
        elif path == "/":
            self._send(
                200,
                {
                    "run_id": owner.status.run_id,
                    "endpoints": [
                        "GET /status",
                        "GET /health",
                        "POST /pause",
                        "POST /resume",
                        "POST /throttle",
                        "POST /stop",
                    ],
                },
            )
        elif path in ("/pause", "/resume", "/throttle", "/stop"):
            self._send(405, {"error": f"use POST {path}"}, {"Allow": "POST"})
        else:
            self._send(404, {"error": f"no such endpoint {path}"})

    def do_POST(self) -> None:
        if not self._authorised():
            return
        owner = self.server.owner
        controls = owner.controls
        parts = urlsplit(self.path)
        path = parts.path.rstrip("/") or "/"
        if path == "/pause":
            controls.pause()
            owner.note("pause")
            self._send(200, {"ok": True, "paused": True})
        elif path == "/resume":
            controls.resume()
            owner.note("resume")
            self._send(200, {"ok": True, "paused": False})
        elif path == "/stop":
            controls.request_stop("stopped by request (POST /stop)")
            owner.note("stop")
            self._send(200, {"ok": True, "stopping": True})
        elif path == "/throttle":
            value = self._ops_per_second(parts.query)
            if value is None:
                self._send(400, {"error": 'give the new limit as {"ops_per_second": N} (N >= 0, 0 = no cap)'})
                return
            controls.throttle(value)
            owner.note("throttle", ops_per_second=value)
            self._send(200, {"ok": True, "write_limit": controls.limiter.limit})
        elif path in ("/status", "/health"):
            self._send(405, {"error": f"use GET {path}"}, {"Allow": "GET"})
        else:
            self._send(404, {"error": f"no such endpoint {path}"})

    def _ops_per_second(self, query: str) -> float | None:
        raw: Any = parse_qs(query).get("ops_per_second", [None])[0]
        length = int(self.headers.get("Content-Length") or 0)
        if raw is None and 0 < length <= _MAX_BODY:
            body = self.rfile.read(length)
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = body.decode("utf-8", "replace").strip()
            raw = parsed.get("ops_per_second") if isinstance(parsed, dict) else parsed
        try:
            value = float(raw)
        except (TypeError, ValueError):
            return None
        return value if 0 <= value < float("inf") else None


class StatusServer:
    """Serves one run's status and control in a daemon thread, until :meth:`close`."""

    def __init__(
        self,
        status: RunStatus,
        controls: Controls,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        on_control: Any = None,
    ) -> None:
        if not is_loopback(host) and not token:
            raise UsageError(
                f"--status-host {host} is reachable from other machines; it needs a token",
                hint="pass --status-token TOKEN (or DOCSHIFT_STATUS_TOKEN), or bind to 127.0.0.1",
            )
        self.status = status
        self.controls = controls
        self.host = host
        self.token = token or None
        self.on_control = on_control
        """Called as ``on_control(action, **fields)`` after each control request (to log it)."""
        try:
            self._server = _Server((host, port), self)
        except OSError as exc:
            raise UsageError(
                f"cannot serve the status endpoint on {host}:{port}: {exc.strerror or exc}",
                hint="choose another --status-port (0 picks a free one)",
            ) from None
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            daemon=True,
            name="docshift-status",
        )
        self._thread.start()

    @property
    def url(self) -> str:
        """Where a client on this machine reaches the endpoint."""
        host = self.host
        if host in ("0.0.0.0", ""):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def note(self, action: str, **fields: Any) -> None:
        if self.on_control is not None:
            self.on_control(action, **fields)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
