"""The webhook address guard: internal addresses refused, checked addresses the only ones dialled."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from persistence import netguard


def _resolver(answers: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError(f"no such host {host}")
        return answers[host]
    return resolve


@pytest.mark.parametrize("url, kind", [
    ("http://127.0.0.1/hook", "loopback"),
    ("http://127.8.9.10:8080/hook", "loopback"),
    ("http://10.1.2.3/hook", "private"),
    ("https://192.168.0.10/hook", "private"),
    ("http://172.16.5.4/hook", "private"),
    ("http://100.64.0.1/hook", "private"),
    ("http://169.254.169.254/latest/meta-data/", "metadata"),
    ("http://169.254.10.10/", "link-local"),
    ("http://[::1]:9000/hook", "loopback"),
    ("http://[fe80::1]/hook", "link-local"),
    ("http://[fc00::5]/hook", "private"),
    ("http://[fd00:ec2::254]/", "metadata"),
    ("http://[::ffff:127.0.0.1]/hook", "loopback"),
    ("http://0.0.0.0/hook", "unspecified"),
    ("http://224.0.0.1/hook", "multicast"),
])
def test_internal_addresses_are_refused(url, kind):
    with pytest.raises(netguard.RefusedURL, match=kind):
        netguard.check_url(url)


def test_a_hostname_resolving_to_loopback_is_refused():
    # The system's own resolver, as deliveries use it.
    with pytest.raises(netguard.RefusedURL, match="localhost resolves to .* loopback"):
        netguard.check_url("http://localhost:8000/hook")


def test_a_name_with_any_internal_address_is_refused_whichever_a_connection_would_pick():
    resolve = _resolver({"mixed.example": ["93.184.215.14", "10.0.0.7"]})
    with pytest.raises(netguard.RefusedURL, match="mixed.example resolves to 10.0.0.7"):
        netguard.check_url("https://mixed.example/hook", resolve=resolve)


def test_public_addresses_pass_and_keep_every_checked_address():
    resolve = _resolver({"hooks.example": ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"]})
    target = netguard.check_url("https://hooks.example:8443/in?team=ml", resolve=resolve)
    assert target == netguard.Target("https", "hooks.example", 8443, "/in?team=ml",
                                     ("93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"))


def test_the_setting_allows_private_receivers_but_never_metadata():
    assert netguard.check_url("http://127.0.0.1:9/x", allow_private=True).addresses == ("127.0.0.1",)
    assert netguard.check_url("http://10.0.0.1/x", allow_private=True).addresses == ("10.0.0.1",)
    for url in ("http://169.254.169.254/", "http://[fd00:ec2::254]/", "http://0.0.0.0/"):
        with pytest.raises(netguard.RefusedURL):
            netguard.check_url(url, allow_private=True)


@pytest.mark.parametrize("url, why", [
    ("ftp://93.184.215.14/x", "only http"),
    ("file:///etc/passwd", "only http"),
    ("http:///nohost", "no host"),
    ("http://user:pw@93.184.215.14/x", "credentials"),
    ("http://93.184.215.14:99999/x", "not a valid URL"),
])
def test_urls_that_cannot_be_receivers_are_refused(url, why):
    with pytest.raises(netguard.RefusedURL, match=why):
        netguard.check_url(url)


def test_a_name_that_does_not_resolve_is_refused_as_worth_retrying():
    with pytest.raises(netguard.Unresolvable):
        netguard.check_url("https://nowhere.example/x", resolve=_resolver({}))


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        type(self).seen.append((self.path, self.headers["Host"]))
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/moved":
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        answer = b"x" * 5000
        self.send_response(201)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def test_post_dials_the_checked_address_and_sends_the_name_as_host(server):
    port = server.server_address[1]
    # The name would resolve elsewhere (or nowhere): only the address that was checked is dialled.
    target = netguard.check_url(f"http://receiver.invalid:{port}/in", allow_private=True,
                                resolve=_resolver({"receiver.invalid": ["127.0.0.1"]}))
    answer = netguard.post(target, b"{}", {"Content-Type": "application/json"}, timeout=5, excerpt_bytes=100)
    assert answer.status == 201 and answer.address == "127.0.0.1"
    assert len(answer.excerpt) == 100  # only the excerpt is read
    assert _Recorder.seen == [("/in", f"receiver.invalid:{port}")]


def test_post_does_not_follow_redirects(server):
    port = server.server_address[1]
    target = netguard.check_url(f"http://127.0.0.1:{port}/moved", allow_private=True)
    answer = netguard.post(target, b"{}", {}, timeout=5)
    assert answer.status == 302
    assert [path for path, _ in _Recorder.seen] == ["/moved"]


def test_post_to_a_closed_port_raises_a_network_error():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens on it
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    target = netguard.check_url(f"http://127.0.0.1:{port}/", allow_private=True)
    with pytest.raises(ConnectionRefusedError):
        netguard.post(target, b"{}", {}, timeout=5)
