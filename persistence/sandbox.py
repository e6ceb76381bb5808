"""Run graph-executing work in a child process with memory, CPU, network and file-write limits.

A TensorFlow graph is a program, and a checkpoint's index decides how much TensorFlow allocates.
The op allow-list and the index size checks refuse what we know to be dangerous; this module is
the second line for what they miss. :func:`run_sandboxed` calls a picklable function in a child
process that has, in this order:

* its own scratch working directory (also ``TMPDIR`` and ``HOME``), removed afterwards;
* where the kernel allows, new user and network namespaces (``unshare(CLONE_NEWUSER |
  CLONE_NEWNET)``): the only interface is a loopback that is down, so nothing can connect out
  or listen;
* then no capabilities at all, in any namespace, and no way to gain one (see below);
* where the kernel has Landlock (5.13+), a ruleset that denies every file-system write outside
  the scratch directory and the directories the caller names (a freeze's export directory);
  reads stay allowed (TensorFlow reads its libraries, the checkpoint and the meta graph);
* ``RLIMIT_DATA`` (memory) and ``RLIMIT_CPU`` (seconds of CPU, then ``SIGXCPU``/``SIGKILL``).

Why ``RLIMIT_DATA`` and not ``RLIMIT_AS``: ``RLIMIT_AS`` counts address space TensorFlow reserves
but never touches. Measured on the worker: importing TensorFlow alone maps 0.99 GB, one tiny
session 1.36 GB, and the figure grows with the core count (a stack and a malloc arena per pool
thread), so an address-space limit either breaks a tiny graph on a big machine or bounds nothing.
``RLIMIT_DATA`` counts private writable memory (heap and anonymous mappings: where tensors
live), 0.3 GB for the same tiny session, so a limit of "a few times the checkpoint plus a
baseline" means what it says.

The child is always forked, never a fresh interpreter. A process that has not started TensorFlow's
thread pools forks it directly: a worker imports TensorFlow before it forks a work horse (4 s saved
per job), and a fork of the horse is ready at once. But TensorFlow's thread pools do not survive a fork (a child of a
process that has already run a session hangs in its first ``Session.run``), so a process that has
started them asks a fork server instead: one helper process per parent, spawned on first need,
that imports TensorFlow (no session, no thread pools) and forks a child per call. The interpreter
start and the TensorFlow import (4-9 s) are then paid once per process, not once per call. The
server is the child's parent, so it reports the exit status and peak RSS back; it ends when its
parent goes away and kills a child whose caller hung up.

In a new user namespace the child holds every capability over files whose owner is mapped in it,
which for a worker that runs as root (or owns the checkpoint) means it could read a file whose mode
denies reading to the worker itself. The child therefore drops every capability (and the means to
regain one) right after the namespaces are made: it never has more file access than its caller.

Progress crosses the boundary on the result pipe; the parent calls ``on_progress`` as messages
arrive. Results and exceptions come back pickled; an exception that cannot be pickled comes back
as :class:`SandboxChildError` with its type name and message.

Like every ``persistence`` module this imports neither Django nor (at module level) TensorFlow.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from persistence.tfruntime import ENVIRONMENT

ProgressCallback = Callable[[float, str], None]

_CLONE_NEWUSER = 0x10000000
_CLONE_NEWNET = 0x40000000

# Landlock (include/uapi/linux/landlock.h); syscall numbers are the same on x86-64 and arm64.
_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1
_LANDLOCK_RULE_NET_PORT = 2
_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_REMOVE_DIR = 1 << 4
_FS_REMOVE_FILE = 1 << 5
_FS_MAKE_CHAR = 1 << 6
_FS_MAKE_DIR = 1 << 7
_FS_MAKE_REG = 1 << 8
_FS_MAKE_SOCK = 1 << 9
_FS_MAKE_FIFO = 1 << 10
_FS_MAKE_BLOCK = 1 << 11
_FS_MAKE_SYM = 1 << 12
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_FS_WRITES_V1 = (_FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_CHAR | _FS_MAKE_DIR
                 | _FS_MAKE_REG | _FS_MAKE_SOCK | _FS_MAKE_FIFO | _FS_MAKE_BLOCK | _FS_MAKE_SYM)

# Capabilities (include/uapi/linux/prctl.h, securebits.h, capability.h).
_PR_SET_PDEATHSIG = 1
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
# NOROOT, NO_SETUID_FIXUP and NO_CAP_AMBIENT_RAISE, each with its lock, and KEEP_CAPS locked off:
# uid 0 gains nothing by exec, by setuid or by ambient capabilities.
_SECUREBITS_NO_PRIVILEGE = (1 << 0 | 1 << 1) | (1 << 2 | 1 << 3) | (1 << 5) | (1 << 6 | 1 << 7)
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

# Messages on the result pipe: a 1-byte kind and a 4-byte length, then a pickle.
_PROGRESS, _RESULT, _ERROR = b"p", b"r", b"e"


class SandboxError(RuntimeError):
    """The child hit a limit or died; the message says which in terms a user can act on."""

    def __init__(self, message: str, *, reason: str, peak_rss_bytes: int = 0) -> None:
        super().__init__(message)
        self.reason = reason  # "memory" | "cpu" | "signal" | "exit"
        self.peak_rss_bytes = peak_rss_bytes


class SandboxChildError(RuntimeError):
    """An exception raised in the child that could not be sent back as itself."""

    def __init__(self, type_name: str, module: str, message: str) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name, self.module_name, self.message = type_name, module, message


@dataclass
class SandboxLimits:
    memory_bytes: int | None  # RLIMIT_DATA; None: no limit
    cpu_seconds: int | None  # RLIMIT_CPU; None: no limit
    writable: Sequence[str] = ()  # directories (besides the scratch one) the child may write beneath
    isolate: bool = True  # namespaces and Landlock where the kernel allows


@dataclass
class SandboxReport:
    """What the child ran under (for job records and tests)."""

    peak_rss_bytes: int = 0
    forked: bool = True
    fork_server: bool = False  # forked by the fork server rather than by the caller itself
    network_isolated: bool = False
    capabilities_dropped: bool = False
    writes_confined: bool = False
    notes: list[str] = field(default_factory=list)


def memory_limit(checkpoint_bytes: int, *, base_mb: float, factor: float) -> int:
    """``base`` (the TensorFlow baseline) plus ``factor`` times the checkpoint, in bytes."""
    return int(base_mb * 2**20 + factor * max(checkpoint_bytes, 0))


# --- in the child ----------------------------------------------------------------------------


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _unshare_network(report: SandboxReport) -> None:
    libc = _libc()
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(_CLONE_NEWUSER | _CLONE_NEWNET) != 0:
        report.notes.append(f"no network namespace: {os.strerror(ctypes.get_errno())}")
        return
    # Map ourselves so that files keep their owner as seen from inside (best effort: without a
    # mapping we run as nobody, which only narrows what we may do).
    try:
        with open("/proc/self/setgroups", "w") as f:
            f.write("deny")
        with open("/proc/self/uid_map", "w") as f:
            f.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as f:
            f.write(f"{gid} {gid} 1")
    except OSError as exc:
        report.notes.append(f"user namespace without an id mapping: {exc.strerror}")
    report.network_isolated = True


def _drop_capabilities(report: SandboxReport) -> None:
    """Give up every capability for good: effective, permitted, inheritable, ambient and bounding.

    The securebits and the bounding set need CAP_SETPCAP: a caller without it (an unprivileged
    worker without a user namespace) has no capability to give up, and ``no_new_privs`` keeps it
    from gaining one by exec.
    """
    libc = _libc()
    notes = []

    def prctl(option: int, arg: int, what: str) -> None:
        if libc.prctl(option, arg, 0, 0, 0) != 0:
            errno = ctypes.get_errno()
            if errno not in (1, 22):  # EPERM: see above; EINVAL: a capability this kernel lacks
                notes.append(f"{what}: {os.strerror(errno)}")

    prctl(_PR_SET_SECUREBITS, _SECUREBITS_NO_PRIVILEGE, "securebits")
    prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, "ambient capabilities")
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            last = int(f.read())
    except (OSError, ValueError):
        last = 63
    for cap in range(last + 1):
        prctl(_PR_CAPBSET_DROP, cap, f"bounding set ({cap})")

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    cleared = libc.capset(ctypes.byref(Header(_LINUX_CAPABILITY_VERSION_3, 0)), (Data * 2)()) == 0
    if not cleared:
        notes.append(f"capset: {os.strerror(ctypes.get_errno())}")
    no_new_privs = libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0
    if not no_new_privs:
        notes.append(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
    if notes:
        report.notes.append("capabilities: " + "; ".join(notes))
    report.capabilities_dropped = cleared and no_new_privs


def _landlock(writable: Sequence[str], report: SandboxReport) -> None:
    libc = _libc()
    libc.syscall.restype = ctypes.c_long
    abi = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0),
                       ctypes.c_uint32(_LANDLOCK_CREATE_RULESET_VERSION))
    if abi < 1:
        report.notes.append(f"no Landlock: {os.strerror(ctypes.get_errno())}")
        return
    handled = _FS_WRITES_V1 | (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    net = (_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0

    class RulesetAttr(ctypes.Structure):
        _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64)]

    class PathBeneath(ctypes.Structure):
        _pack_ = 1
        _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]

    attr = RulesetAttr(handled, net)
    size = ctypes.sizeof(RulesetAttr) if abi >= 4 else 8
    ruleset = libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                           ctypes.c_uint32(0))
    if ruleset < 0:
        report.notes.append(f"no Landlock ruleset: {os.strerror(ctypes.get_errno())}")
        return
    try:
        for path in writable:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                rule = PathBeneath(handled, fd)
                if libc.syscall(_SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset),
                                ctypes.c_int(_LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule),
                                ctypes.c_uint32(0)) != 0:
                    report.notes.append(f"Landlock rule for {path}: {os.strerror(ctypes.get_errno())}")
            finally:
                os.close(fd)
        # Landlock refuses restrict_self to a process that could regain privileges by exec.
        if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            report.notes.append(f"no_new_privs refused: {os.strerror(ctypes.get_errno())}")
            return
        if libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)) != 0:
            report.notes.append(f"Landlock restrict_self failed: {os.strerror(ctypes.get_errno())}")
            return
        report.writes_confined = True
        if net:
            report.network_isolated = True
    finally:
        os.close(ruleset)


def _set_limit(which: int, soft: int, hard: int) -> None:
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


def _enter(limits: SandboxLimits, scratch: str, report: SandboxReport) -> None:
    """Apply every restriction to the current (single-threaded) process."""
    os.chdir(scratch)
    os.environ["TMPDIR"] = os.environ["HOME"] = scratch
    tempfile.tempdir = scratch
    if limits.isolate:
        # unshare(CLONE_NEWUSER) needs a single-threaded caller: before anything starts threads.
        _unshare_network(report)
        # A new user namespace grants every capability over the files of mapped owners (the
        # worker's own, or all of root's): more than the worker has. Nothing the graph does needs one.
        _drop_capabilities(report)
        _landlock([scratch, *limits.writable], report)
    if limits.memory_bytes is not None:
        _set_limit(resource.RLIMIT_DATA, limits.memory_bytes, limits.memory_bytes)
    if limits.cpu_seconds is not None:
        # SIGXCPU at the soft limit; the hard limit (SIGKILL) catches a handler that ignores it.
        _set_limit(resource.RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 5)


def _send(fd: int, kind: bytes, payload: Any) -> None:
    data = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    message = kind + struct.pack("<I", len(data)) + data
    view = memoryview(message)
    while view:
        view = view[os.write(fd, view):]


def _rebuild_exception(cls: type, args: tuple, state: dict) -> BaseException:
    # Not cls(*args): an exception whose __init__ takes other arguments than it passes on to
    # Exception.__init__ (UnsafeGraph(refusals, source)) would be rebuilt from its message.
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class _ExceptionCarrier:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __reduce__(self) -> tuple:
        return _rebuild_exception, (type(self.exc), self.exc.args, dict(self.exc.__dict__))


def _send_error(fd: int, exc: BaseException) -> None:
    try:
        carrier = _ExceptionCarrier(exc)
        pickle.loads(pickle.dumps(carrier))
        _send(fd, _ERROR, carrier)
    except Exception:  # noqa: BLE001 - any exception that does not survive a round trip
        message = getattr(exc, "message", None) or str(exc)
        _send(fd, _ERROR, _ExceptionCarrier(SandboxChildError(type(exc).__name__, type(exc).__module__,
                                                             str(message))))


def _child_run(fd: int, call: bytes | tuple, limits: SandboxLimits, scratch: str, report: SandboxReport) -> int:
    try:
        _enter(limits, scratch, report)
        func, args, kwargs, wants_progress = pickle.loads(call) if isinstance(call, bytes) else call
        if wants_progress:
            kwargs = {**kwargs, "on_progress": lambda percent, message: _send(fd, _PROGRESS, (percent, message))}
        value = func(*args, **kwargs)
        _send(fd, _RESULT, (value, report))
        return 0
    except MemoryError as exc:
        try:
            _send_error(fd, exc)
        except MemoryError:
            pass
        return 3
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        _send_error(fd, exc)
        return 1


def _child_exit(code: int) -> None:
    sys.stdout.flush()
    os._exit(code)


# --- the fork server -------------------------------------------------------------------------

# What the fork server imports before it forks anything: TensorFlow and the engines children run.
_PRELOAD = ("tensorflow", "persistence.graphsafety", "persistence.restore", "persistence.freeze")

_REQUEST = struct.Struct("<I")  # the length of the pickled request that follows
_STARTED = struct.Struct("<i")  # the child's pid
_ENDED = struct.Struct("<iq")  # its wait status and peak RSS in KiB


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        chunk = sock.recv(n - got)
        if not chunk:
            raise EOFError(f"connection closed after {got} of {n} bytes")
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


@dataclass
class _ServedCall:
    conn: socket.socket  # to the caller: the request came on it, the pid and the end go back on it
    pidfd: int | None  # readable when the child has ended (None: polled)
    hung_up: bool = False


def _serve(control_fd: int) -> None:
    """The fork server's main loop: one call per connection that arrives on ``control_fd``."""
    import importlib

    for name in _PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    control = socket.socket(fileno=control_fd)
    control.sendall(b"R")
    calls: dict[int, _ServedCall] = {}
    while True:
        watched: list[Any] = [control]
        for call in calls.values():
            if not call.hung_up:
                watched.append(call.conn)
            if call.pidfd is not None:
                watched.append(call.pidfd)
        polled = any(call.pidfd is None for call in calls.values())
        readable, _, _ = select.select(watched, [], [], 0.05 if polled else None)
        if control in readable:
            try:
                message, fds, _, _ = socket.recv_fds(control, 1, 1)
            except OSError:
                message, fds = b"", []
            if not message:  # the caller's process is gone: so is every reason to run its calls
                for pid in calls:
                    _kill(pid)
                os._exit(0)
            for fd in fds:
                _start_served_call(socket.socket(fileno=fd), control, calls)
        for pid, call in list(calls.items()):
            if call.conn in readable and not call.hung_up:
                # A caller sends nothing after its request: readable means it hung up (or broke
                # the protocol); its child must not outlive it.
                call.hung_up = True
                _kill(pid)
            if call.pidfd is not None and call.pidfd not in readable:
                continue
            try:
                ended, status, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                ended, status, usage = pid, 0, None
            if ended != pid:
                continue
            try:
                call.conn.sendall(_ENDED.pack(status, usage.ru_maxrss if usage is not None else 0))
            except OSError:
                pass
            call.conn.close()
            if call.pidfd is not None:
                os.close(call.pidfd)
            del calls[pid]


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _start_served_call(conn: socket.socket, control: socket.socket, calls: dict[int, _ServedCall]) -> None:
    fds: list[int] = []
    try:
        head, fds, _, _ = socket.recv_fds(conn, _REQUEST.size, 3)
        if not head:
            raise EOFError("no request")
        head += _recv_exactly(conn, _REQUEST.size - len(head))
        request = _recv_exactly(conn, _REQUEST.unpack(head)[0])
        env, path, limits, scratch, call = pickle.loads(request)
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, struct.error):
        for fd in fds:
            os.close(fd)
        conn.close()
        return
    write_fd, stderr_fd, *stdout_fd = fds
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child ends in os._exit
        code = 1
        try:
            # The server's connections stay with the server: a graph that could talk to it could
            # ask for a child without limits.
            control.close()
            conn.close()
            for other in calls.values():
                other.conn.close()
                if other.pidfd is not None:
                    os.close(other.pidfd)
            for fd, target in ((stderr_fd, 2), *((fd, 1) for fd in stdout_fd)):
                os.dup2(fd, target)
                os.close(fd)
            os.environ.clear()
            os.environ.update(env)
            sys.path[:] = path
            code = _child_run(write_fd, call, limits, scratch, SandboxReport(forked=True, fork_server=True))
        finally:
            _child_exit(code)
    for fd in fds:
        os.close(fd)
    try:
        pidfd: int | None = os.pidfd_open(pid)
    except (AttributeError, OSError):
        pidfd = None
    calls[pid] = _ServedCall(conn, pidfd)
    try:
        conn.sendall(_STARTED.pack(pid))
    except OSError:
        calls[pid].hung_up = True
        _kill(pid)


class _ForkServer:
    """The caller's side of the fork server: started on first use, once per process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._control: socket.socket | None = None
        self._process: subprocess.Popen | None = None

    def forget(self) -> None:
        """In a forked child: the parent's server is the parent's (a child starts its own if needed)."""
        self._lock = threading.Lock()
        if self._control is not None:
            self._control.close()
        self._control = self._process = None

    def _drop(self) -> None:
        if self._control is not None:
            self._control.close()
        self._control = None

    def _connected(self) -> socket.socket:
        if self._control is not None and self._process is not None and self._process.poll() is None:
            return self._control
        self._drop()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        env = {**ENVIRONMENT, **env}
        try:
            # Its own session: a Ctrl-C meant for the caller ends the caller, which ends the server.
            self._process = subprocess.Popen(
                [sys.executable, "-c", f"from persistence.sandbox import _serve; _serve({theirs.fileno()})"],
                stdin=subprocess.DEVNULL, pass_fds=(theirs.fileno(),), env=env, start_new_session=True,
            )
        finally:
            theirs.close()
        if ours.recv(1) != b"R":
            ours.close()
            raise SandboxError("the graph sandbox's fork server did not start", reason="exit")
        self._control = ours
        return ours

    def start(self, request: bytes, fds: list[int]) -> tuple[socket.socket, int]:
        """Hand a call to the server: the connection its end arrives on, and the child's pid."""
        for attempt in range(2):
            with self._lock:
                control = self._connected()
                conn, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    socket.send_fds(control, [b"c"], [theirs.fileno()])
                except OSError:
                    conn.close()
                    self._drop()  # the server died (killed?): a new one, once
                    if attempt:
                        raise
                    continue
                finally:
                    theirs.close()
            try:
                socket.send_fds(conn, [_REQUEST.pack(len(request))], fds)
                conn.sendall(request)
                return conn, _STARTED.unpack(_recv_exactly(conn, _STARTED.size))[0]
            except (OSError, EOFError):
                conn.close()
                raise SandboxError("the graph sandbox's fork server did not start the child",
                                   reason="exit") from None
        raise AssertionError("unreachable")

    @staticmethod
    def wait(conn: socket.socket) -> tuple[int, int]:
        """The child's wait status and peak RSS in bytes, once it has ended."""
        try:
            status, peak_kib = _ENDED.unpack(_recv_exactly(conn, _ENDED.size))
        except (OSError, EOFError):
            # The server itself was killed: its children went with it.
            return signal.SIGKILL, 0
        return status, peak_kib * 1024


_FORK_SERVER = _ForkServer()
os.register_at_fork(after_in_child=_FORK_SERVER.forget)


# --- in the parent ---------------------------------------------------------------------------


def _tensorflow_threads_started() -> bool:
    # TensorFlow names its pool threads "tf_..."; importing it starts none of them.
    try:
        names = os.listdir("/proc/self/task")
    except OSError:
        return True
    if len(names) <= 1:
        return False
    for tid in names:
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().startswith("tf_"):
                    return True
        except OSError:
            continue
    return False


def _read_exactly(fd: int, n: int) -> bytes | None:
    parts, got = [], 0
    while got < n:
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


def _receive(fd: int, on_progress: ProgressCallback | None) -> tuple[bytes, Any] | None:
    while True:
        head = _read_exactly(fd, 5)
        if head is None:
            return None
        kind, length = head[:1], struct.unpack("<I", head[1:])[0]
        body = _read_exactly(fd, length)
        if body is None:
            return None
        payload = pickle.loads(body)
        if kind == _PROGRESS:
            if on_progress is not None:
                on_progress(*payload)
            continue
        return kind, payload


def _limit_text(limits: SandboxLimits) -> str:
    return f"{(limits.memory_bytes or 0) / 2**20:.0f} MB"


def _death_message(status: int, limits: SandboxLimits, peak: int, stderr: str) -> SandboxError:
    out_of_memory = any(s in stderr for s in ("bad_alloc", "Cannot allocate memory", "out of memory",
                                              "OOM", "MemoryError"))
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and limits.cpu_seconds is not None
                                     and "cpu" in stderr.lower()):
            return SandboxError(f"stopped: ran out of the {limits.cpu_seconds} s CPU limit", reason="cpu",
                                peak_rss_bytes=peak)
        if limits.memory_bytes is not None and (out_of_memory or sig == signal.SIGABRT):
            return SandboxError(f"stopped: ran out of the {_limit_text(limits)} memory limit "
                                f"(killed by {signal.Signals(sig).name})", reason="memory", peak_rss_bytes=peak)
        return SandboxError(f"the graph process was killed by signal {signal.Signals(sig).name}",
                            reason="signal", peak_rss_bytes=peak)
    code = os.WEXITSTATUS(status)
    if limits.memory_bytes is not None and (code == 3 or out_of_memory):
        return SandboxError(f"stopped: ran out of the {_limit_text(limits)} memory limit", reason="memory",
                            peak_rss_bytes=peak)
    tail = stderr.strip().splitlines()[-1:] if stderr.strip() else []
    return SandboxError(f"the graph process exited with status {code}" + (f": {tail[0]}" if tail else ""),
                        reason="exit", peak_rss_bytes=peak)


def _is_memory_error(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    name = exc.type_name if isinstance(exc, SandboxChildError) else type(exc).__name__
    return name == "ResourceExhaustedError"


def run_sandboxed(
    func: Callable[..., Any],
    *args: Any,
    limits: SandboxLimits,
    on_progress: ProgressCallback | None = None,
    report: SandboxReport | None = None,
    **kwargs: Any,
) -> Any:
    """``func(*args, **kwargs)`` in a limited child process; its result, or its exception re-raised.

    With ``on_progress`` the function is called with an ``on_progress=`` keyword whose calls are
    forwarded to the parent's callback. ``func`` and the arguments must be picklable (a module-level
    function): a process that has run TensorFlow hands them to the fork server. Raises :class:`SandboxError` when the child runs out of
    memory or CPU time or dies; ``report`` (when given) is filled with what was enforced.
    """
    report = report if report is not None else SandboxReport()
    scratch = tempfile.mkdtemp(prefix="graph-sandbox-")
    read_fd, write_fd = os.pipe()
    stderr_file = tempfile.TemporaryFile(prefix="graph-sandbox-stderr-")
    call = (func, args, kwargs, on_progress is not None)
    conn: socket.socket | None = None
    served = _tensorflow_threads_started()
    try:
        if served:
            # The child starts in its scratch directory: relative entries (the "" of a script) would
            # move there with it.
            path = [os.path.abspath(entry) for entry in sys.path]
            request = pickle.dumps((dict(os.environ), path, limits, scratch,
                                    pickle.dumps(call, protocol=pickle.HIGHEST_PROTOCOL)))
            fds = [write_fd, stderr_file.fileno()] + ([1] if _is_open(1) else [])
            conn, pid = _FORK_SERVER.start(request, fds)
        else:
            # Flushed first so that buffered output is not written twice.
            sys.stdout.flush()
            sys.stderr.flush()
            caller = os.getpid()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child ends in os._exit
                code = 1
                try:
                    # A caller killed mid-call (kill -9 of a work horse) takes its child with it,
                    # as the fork server does for its children: nobody would read the result.
                    _libc().prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                    if os.getppid() != caller:
                        return
                    os.close(read_fd)
                    os.dup2(stderr_file.fileno(), 2)
                    code = _child_run(write_fd, call, limits, scratch, SandboxReport(forked=True))
                finally:
                    _child_exit(code)
        os.close(write_fd)
        write_fd = -1
        try:
            message = _receive(read_fd, on_progress)
        except BaseException:
            # The caller's progress callback raised (a cancel): the child must not outlive it.
            _kill(pid)
            raise
        finally:
            status, report.peak_rss_bytes = _FORK_SERVER.wait(conn) if conn is not None else _wait(pid)
        if message is None:
            stderr_file.seek(0)
            stderr = stderr_file.read()[-8192:].decode("utf-8", "replace")
            raise _death_message(status, limits, report.peak_rss_bytes, stderr)
        kind, payload = message
        if kind == _RESULT:
            value, child_report = payload
            report.forked = True
            report.fork_server = child_report.fork_server
            report.network_isolated = child_report.network_isolated
            report.capabilities_dropped = child_report.capabilities_dropped
            report.writes_confined = child_report.writes_confined
            report.notes = child_report.notes
            return value
        if limits.memory_bytes is not None and _is_memory_error(payload):
            raise SandboxError(f"stopped: ran out of the {_limit_text(limits)} memory limit ({payload})",
                               reason="memory", peak_rss_bytes=report.peak_rss_bytes) from payload
        raise payload
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        if conn is not None:
            conn.close()
        stderr_file.close()
        shutil.rmtree(scratch, ignore_errors=True)


def _wait(pid: int) -> tuple[int, int]:
    """Our own child's wait status and peak RSS in bytes."""
    while True:
        try:
            _, status, usage = os.wait4(pid, 0)
            return status, usage.ru_maxrss * 1024
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0, 0


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def sandbox_available() -> tuple[bool, str]:
    """Whether namespaces and Landlock both take effect here: (True, "") or (False, the reason)."""
    report = SandboxReport()
    run_sandboxed(_probe, limits=SandboxLimits(memory_bytes=None, cpu_seconds=10), report=report)
    if report.network_isolated and report.writes_confined:
        return True, ""
    return False, "; ".join(report.notes) or "the kernel refused the sandbox"


def _probe() -> None:
    return None
