"""A directory export as one reproducible ``.tar``: the same files give the same bytes, hence the same sha256.

Entries are sorted, and carry no owner, a fixed modification time and normalised modes, so that
a re-export of the same model, or the same export on another machine, has the same digest and
ETag.

The archive is never written out. Its layout (each member's header, where its bytes sit in the
archive, the end-of-archive blocks) follows from the directory listing alone, so the bytes are
produced on demand from the directory: hashed once when the export is made, streamed to
downloads from any offset (HTTP ranges seek into members), hashed again by a re-check. These
are exactly the bytes :func:`write_tar` (``tarfile`` in USTAR format) would write; that
function stays as the reference the stream is tested against.

Files are opened relative to descriptors of their directories, never following a symbolic link
in any component, so a link swapped into the export after its listing was taken is refused
rather than read.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from persistence.files import atomic_writer

# 2000-01-01T00:00:00Z: after the epoch, so that no unpacking tool warns about a zero time.
FIXED_MTIME = 946684800
_CHUNK = 1 << 20
_BLOCK = tarfile.BLOCKSIZE
_RECORD = tarfile.RECORDSIZE
_ZEROS = bytes(_RECORD)
_NOFOLLOW = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class ArchiveChanged(OSError):
    """The directory no longer matches the layout being streamed (a file shrank, grew, was
    replaced, or turned into something that is not a regular file)."""


@dataclass(frozen=True)
class Member:
    """One archive entry: its header at ``offset``, then ``size`` bytes of ``parts`` (a file
    relative to the archived directory; empty for a directory), zero-padded to a whole block."""

    offset: int
    header: bytes
    parts: tuple[str, ...]
    is_dir: bool
    size: int
    mtime_ns: int

    @property
    def data_offset(self) -> int:
        return self.offset + len(self.header)

    @property
    def end(self) -> int:
        return self.data_offset + -(-self.size // _BLOCK) * _BLOCK


@dataclass(frozen=True)
class ArchiveLayout:
    """Where every byte of the archive of ``directory`` comes from.

    ``st_size`` and ``st_mtime_ns`` (the archive's length and the newest modification time of
    anything in the directory, itself included) let a layout stand where an ``os.stat`` of a
    single-file export does: a file changed, added or removed moves one or the other.
    """

    directory: str
    members: tuple[Member, ...]
    st_size: int
    st_mtime_ns: int
    # Where members' bytes come from when not from the local ``directory`` (an export in a bucket):
    # ``read(member, skip, length)`` yields ``length`` bytes of the member from ``skip``.
    read: Callable[[Member, int, int], Iterator[bytes]] | None = field(default=None, compare=False)

    @property
    def content_bytes(self) -> int:
        """Total size of the regular files."""
        return sum(m.size for m in self.members if not m.is_dir)

    def iter_bytes(self, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """The archive's bytes from ``start``, ``length`` of them (to the end when None).

        Raises :class:`ArchiveChanged` (an ``OSError``) when a member's file is not the one
        listed any more: the stream stops short rather than send other bytes under this layout.
        """
        end = self.st_size if length is None else min(self.st_size, start + length)
        position = start
        top = _open_directory(self.directory) if self.read is None else -1
        try:
            for member in self.members:
                if position >= end:
                    break
                if member.end <= position:
                    continue
                header_end = member.data_offset
                if position < header_end:
                    yield member.header[position - member.offset:min(end, header_end) - member.offset]
                    position = min(end, header_end)
                data_end = header_end + member.size
                if position < min(end, data_end):
                    source = _member_bytes if self.read is None else (lambda _top, *args: self.read(*args))
                    for chunk in source(top, member, position - header_end, min(end, data_end) - position):
                        position += len(chunk)
                        yield chunk
                if position < min(end, member.end):
                    stop = min(end, member.end)
                    yield _ZEROS[:stop - position]
                    position = stop
            while position < end:  # the end-of-archive blocks and the record padding
                step = min(end - position, _RECORD)
                yield _ZEROS[:step]
                position += step
        finally:
            if top >= 0:
                os.close(top)

    def sha256(self) -> str:
        """The sha256 of the whole archive, read from the directory (nothing is written)."""
        digest = hashlib.sha256()
        for chunk in self.iter_bytes():
            digest.update(chunk)  # releases the GIL for large buffers
        return digest.hexdigest()


def _open_directory(path: str, *, dir_fd: int | None = None) -> int:
    try:
        return os.open(path, _NOFOLLOW | os.O_DIRECTORY, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ArchiveChanged(exc.errno, f"{path} is not a directory (a symbolic link or a file)") from None
        raise


def _open_member(top: int, parts: tuple[str, ...]) -> int:
    """A descriptor of the regular file ``parts`` under ``top``, no component followed if a link."""
    opened: list[int] = []
    try:
        parent = top
        for name in parts[:-1]:
            parent = _open_directory(name, dir_fd=parent)
            opened.append(parent)
        try:
            fd = os.open(parts[-1], _NOFOLLOW, dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ArchiveChanged(exc.errno, f"{'/'.join(parts)} is a symbolic link") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise ArchiveChanged(errno.EINVAL, f"{'/'.join(parts)} is not a regular file")
        os.set_blocking(fd, True)
        return fd
    finally:
        for fd in opened:
            os.close(fd)


def _member_bytes(top: int, member: Member, skip: int, length: int) -> Iterator[bytes]:
    fd = _open_member(top, member.parts)
    try:
        info = os.fstat(fd)
        if info.st_size != member.size or info.st_mtime_ns != member.mtime_ns:
            raise ArchiveChanged(errno.ESTALE, f"{'/'.join(member.parts)} changed since the archive was laid out")
        position, remaining = skip, length
        while remaining > 0:
            chunk = os.pread(fd, min(_CHUNK, remaining), position)
            if not chunk:
                raise ArchiveChanged(errno.ESTALE, f"{'/'.join(member.parts)} is shorter than when it was listed")
            position += len(chunk)
            remaining -= len(chunk)
            yield chunk
    finally:
        os.close(fd)


def _header(arcname: str, is_dir: bool, size: int) -> bytes:
    info = tarfile.TarInfo(arcname)
    if is_dir:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, size
    info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "", ""
    # What TarFile.addfile writes for it (its default encoding and error handler).
    return info.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")


def archive_layout(directory: str | os.PathLike[str], *, top: str | None = None) -> ArchiveLayout:
    """The layout of ``directory``'s archive, its entries under ``top`` (default: its own name).

    Raises :class:`ArchiveChanged` for a symbolic link (the directory itself or anything in it)
    or anything but regular files and directories, ``OSError`` when it cannot be read.
    """
    path = os.fspath(directory)
    top = top or Path(path).name
    found: list[tuple[tuple[str, ...], bool, int, int]] = []
    root_fd = _open_directory(path)
    try:
        newest = os.fstat(root_fd).st_mtime_ns
        for root, dirs, names, fd in os.fwalk(".", dir_fd=root_fd, follow_symlinks=False):
            base = tuple(p for p in root.split("/") if p not in ("", "."))
            for name in dirs + names:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                    kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                    raise ArchiveChanged(errno.EINVAL, f"{'/'.join((*base, name))} is {kind}; "
                                                       "exports hold regular files only")
                is_dir = stat.S_ISDIR(st.st_mode)
                found.append(((*base, name), is_dir, 0 if is_dir else st.st_size, st.st_mtime_ns))
                newest = max(newest, st.st_mtime_ns)
    finally:
        os.close(root_fd)
    return layout_from_entries(path, found, top=top, newest=newest)


def layout_from_entries(directory: str, found: list[tuple[tuple[str, ...], bool, int, int]], *, top: str,
                        newest: int, read: Callable[[Member, int, int], Iterator[bytes]] | None = None,
                        ) -> ArchiveLayout:
    """The archive of entries ``(parts, is_dir, size, mtime_ns)`` listed elsewhere (a directory
    below ``top``, or the manifest of one copied into a bucket): the same entries give the same
    bytes wherever they are read from."""
    found = sorted(found, key=lambda entry: entry[0])
    members, offset = [], 0
    for parts, is_dir, size, mtime_ns in [((), True, 0, 0), *found]:
        member = Member(offset, _header("/".join((top, *parts)), is_dir, size), parts, is_dir, size, mtime_ns)
        members.append(member)
        offset = member.end
    offset += 2 * _BLOCK
    offset += -offset % _RECORD
    return ArchiveLayout(directory=directory, members=tuple(members), st_size=offset, st_mtime_ns=newest, read=read)


def _entries(directory: Path) -> list[Path]:
    found = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        base = Path(root)
        found.extend(base / d for d in dirs)
        found.extend(base / n for n in sorted(names))
    return sorted(found, key=lambda p: p.relative_to(directory).parts)


def _info(path: Path, arcname: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(arcname)
    st = path.lstat()
    if path.is_symlink():
        raise ValueError(f"{path} is a symbolic link; exports hold regular files only")
    if path.is_dir():
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    else:
        info.type, info.mode, info.size = tarfile.REGTYPE, 0o644, st.st_size
    info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "", ""
    return info


def write_tar(directory: str | os.PathLike[str], tar_path: str | os.PathLike[str], *,
              owner: str | None = None) -> tuple[int, str]:
    """Archive ``directory`` (under its own name) into ``tar_path`` with ``tarfile``; return ``(size, sha256)``.

    The materialised form of :func:`archive_layout`'s stream, byte for byte: what the stream is
    tested against, and a file for tools that want one. Not synced to disk.
    """
    directory = Path(directory)
    top = directory.name
    digest = hashlib.sha256()
    size = 0

    class _Hashing:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data: bytes) -> int:
            nonlocal size
            digest.update(data)
            size += len(data)
            return self._handle.write(data)

        def tell(self) -> int:
            return size

    with atomic_writer(tar_path, owner=owner, sync=False) as handle:
        # Not stream mode ("w|"): its buffer is grown by concatenation, a copy per block (measured:
        # 175 MB/s); plain "w" writes each block straight through.
        with tarfile.open(fileobj=_Hashing(handle), mode="w", format=tarfile.USTAR_FORMAT) as archive:
            archive.copybufsize = _CHUNK
            archive.addfile(_info(directory, top))
            for path in _entries(directory):
                info = _info(path, "/".join((top, *path.relative_to(directory).parts)))
                if info.isdir():
                    archive.addfile(info)
                else:
                    with open(path, "rb") as source:
                        archive.addfile(info, source)
    return size, digest.hexdigest()

