"""Functions a sandboxed child runs in tests: importable by name and free of Django."""

from __future__ import annotations

import socket


def connect_out() -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(("1.1.1.1", 80))
        return "connected"
    except OSError as exc:
        return f"refused: {exc}"
    finally:
        s.close()


def listen() -> str:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.listen()
        return "listening"
    except OSError as exc:
        return f"refused: {exc}"
    finally:
        s.close()


def read_file(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f"read {len(f.read())} bytes"
    except OSError as exc:
        return f"refused: {exc.strerror}"
