"""A real HTTP receiver for webhook tests: ``http.server`` on loopback, in a thread.

It records every request and answers from a script (a list of statuses, then 200 for the rest),
so a test can be a receiver that fails three times, redirects, or is down and comes back.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered

    @property
    def json(self) -> dict:
        return json.loads(self.body)


class Receiver:
    def __init__(self, script: list[int] | None = None, *, port: int = 0):
        self.script = list(script or [])
        self.port = port
        self.requests: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    receiver.requests.append(Received(self.path, dict(self.headers), body, status))
                answer = json.dumps({"answered": status}).encode()
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected-here")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self, name: str | None = None) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if name is None or r.headers.get("X-Webhook-Event") == name]

    def wait_for(self, name: str, count: int = 1, timeout: float = 60) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.events(name)
            if len(found) >= count:
                return found
            time.sleep(0.1)
        raise AssertionError(f"the receiver got {len(self.events(name))} {name} event(s), not {count}, "
                             f"in {timeout:.0f} s (all: {[r.headers.get('X-Webhook-Event') for r in self.requests]})")

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def readme_verifier():
    """The signature check exactly as the README gives it to receivers (its ``python`` block that
    defines ``verify``), so the README cannot drift from what deliveries send."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    [code] = [b for b in blocks if "def verify(" in b]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - our own README
    return namespace["verify"]
