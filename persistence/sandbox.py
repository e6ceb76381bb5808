"""Run graph-executing work in a child process with memory, CPU, network and file-write limits.

A TensorFlow graph is a program, and a checkpoint's index decides how much TensorFlow allocates.
The op allow-list and the index size checks refuse what we know to be dangerous; this module is
the second line for what they miss. :func:`run_sandboxed` calls a picklable function in a child
process that has, in this order:

* its own scratch working directory (also ``TMPDIR`` and ``HOME``), removed afterwards;
* where the kernel allows, new user and network namespaces (``unshare(CLONE_NEWUSER |
  CLONE_NEWNET)``): the only interface is a loopback that is down, so nothing can connect out
  or listen;
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

The child is forked when that is safe and spawned otherwise. A worker imports TensorFlow before
it forks (4 s saved per job), and a fork of that is ready at once; but TensorFlow's thread pools
do not survive a fork (a child of a process that has already run a session hangs in its first
``Session.run``), so a process that has started them spawns a fresh interpreter instead.

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
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    network_isolated: bool = False
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
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
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


def _spawned_main() -> None:
    """Entry point of a spawned child: the call arrives on stdin with the result pipe's number."""
    data = sys.stdin.buffer.read()
    fd, limits, scratch, call = pickle.loads(data)
    report = SandboxReport(forked=False)
    code = _child_run(fd, call, limits, scratch, report)
    sys.stdout.flush()
    os._exit(code)


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
    forwarded to the parent's callback. ``func`` and the arguments must be picklable when the child
    is spawned (a module-level function). Raises :class:`SandboxError` when the child runs out of
    memory or CPU time or dies; ``report`` (when given) is filled with what was enforced.
    """
    report = report if report is not None else SandboxReport()
    scratch = tempfile.mkdtemp(prefix="graph-sandbox-")
    read_fd, write_fd = os.pipe()
    stderr_file = tempfile.TemporaryFile(prefix="graph-sandbox-stderr-")
    fork = not _tensorflow_threads_started()
    try:
        if fork:
            # Flushed first so that buffered output is not written twice.
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child ends in os._exit
                code = 1
                try:
                    os.close(read_fd)
                    os.dup2(stderr_file.fileno(), 2)
                    code = _child_run(write_fd, (func, args, kwargs, on_progress is not None), limits,
                                      scratch, SandboxReport(forked=True))
                finally:
                    os._exit(code)
            process = None
        else:
            call = pickle.dumps((func, args, kwargs, on_progress is not None))
            root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
            process = subprocess.Popen(
                [sys.executable, "-c", "from persistence.sandbox import _spawned_main; _spawned_main()"],
                stdin=subprocess.PIPE, stderr=stderr_file, pass_fds=(write_fd,), env=env,
            )
            pid = process.pid
            assert process.stdin is not None
            process.stdin.write(pickle.dumps((write_fd, limits, scratch, call)))
            process.stdin.close()
        os.close(write_fd)
        write_fd = -1
        try:
            message = _receive(read_fd, on_progress)
        except BaseException:
            # The caller's progress callback raised (a cancel): the child must not outlive it.
            os.kill(pid, signal.SIGKILL)
            raise
        finally:
            while True:
                try:
                    _, status, usage = os.wait4(pid, 0)
                    break
                except InterruptedError:
                    continue
                except ChildProcessError:
                    status, usage = 0, None
                    break
            if process is not None:
                process.returncode = os.waitstatus_to_exitcode(status)
        report.peak_rss_bytes = int(usage.ru_maxrss * 1024) if usage is not None else 0
        if message is None:
            stderr_file.seek(0)
            stderr = stderr_file.read()[-8192:].decode("utf-8", "replace")
            raise _death_message(status, limits, report.peak_rss_bytes, stderr)
        kind, payload = message
        if kind == _RESULT:
            value, child_report = payload
            report.forked = fork
            report.network_isolated = child_report.network_isolated
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
        stderr_file.close()
        shutil.rmtree(scratch, ignore_errors=True)


def sandbox_available() -> tuple[bool, str]:
    """Whether namespaces and Landlock both take effect here: (True, "") or (False, the reason)."""
    report = SandboxReport()
    run_sandboxed(_probe, limits=SandboxLimits(memory_bytes=None, cpu_seconds=10), report=report)
    if report.network_isolated and report.writes_confined:
        return True, ""
    return False, "; ".join(report.notes) or "the kernel refused the sandbox"


def _probe() -> None:
    return None
