"""The bucket side of discovery: run directories that are ``s3://`` or ``gs://`` prefixes.

A bucket has no directory to stat and no files to open: a run's objects are listed (one LIST
request per 1,000 keys; each entry carries its size, ETag and time, so nothing is stat'ed), the
listing's digest stands for the directory stamp, and the ``.index`` objects that must be read are
fetched ahead, many in flight at once, into private local copies for TensorFlow's reader, which
reads files only. Unchanged checkpoints (same ETags) cost no GET at all.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future

from persistence import storage
from persistence.listing import (
    Listing,
    cached_outcome,
    file_info,
    files_digest,
    finish_listing,
    listed_files,
    run_base,
    sort_entry,
)


def list_entries(directory: str) -> list[storage.Entry]:
    """The files of a run directory in a bucket: one LIST request per 1,000 keys, nothing else.

    A bucket has no directory stamp to look at first: a rescan lists, compares
    :func:`entries_stamp` with the last one, and hands the same entries to :func:`list_directory`
    when something changed. Raises ``storage.StorageError`` when the bucket cannot be listed:
    a scan must not take an unreachable bucket for an emptied run.
    """
    return storage.storage_for(directory).list(directory)


def list_entries_and_folders(directory: str) -> tuple[list[storage.Entry], list[str]]:
    """:func:`list_entries` and, from the same LIST requests, the names of the subfolders (where
    trainers put event files: ``eval/``, ``train/``)."""
    entries, folders, _ = storage.storage_for(directory).list_with_prefixes(directory)
    return entries, folders


def entries_stamp(entries: Iterable[storage.Entry]) -> str:
    """What :func:`directory_stamp` is for a local directory, for a bucket listing: a digest of
    every key with its size, ETag and last-modified time (objects are replaced, never rewritten
    in place, so a new ETag or time means new content)."""
    digest = hashlib.blake2b(digest_size=16)
    for entry in sorted(entries, key=lambda e: e.name):
        line = f"{entry.name}\t{entry.size}\t{entry.etag}\t{entry.mtime_ns}\n"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return "objects:" + digest.hexdigest()


def listing_from_entries(directory: str, entries: list[storage.Entry]) -> Listing:
    # A bucket has no symbolic links, and its entries already carry size and fingerprint.
    indexes: dict = {}
    metas: dict = {}
    shards: dict = {}
    state_candidates: list[str] = []
    others: dict = {}
    for entry in entries:
        sort_entry(entry, indexes, metas, shards, state_candidates, others)
    # TensorFlow's V1 format (one file per checkpoint, recognised by its last bytes) is not looked
    # for in buckets: that would cost a GET per unrecognised file on every changed scan.
    return finish_listing(directory, indexes, metas, shards, state_candidates, [], {}, [])


def index_urls_to_read(listing: Listing, prefixes: Sequence[str], known: Mapping[str, str]) -> list[str]:
    """The ``.index`` objects describing ``prefixes`` will read: those not unchanged since ``known``."""
    base, urls = run_base(listing.directory), []
    for prefix in prefixes:
        index_entry, found, meta_entry = listed_files(listing, prefix)
        files = [file_info(index_entry), *(file_info(e) for _, _, e in found)]
        if meta_entry is not None:
            files.append(file_info(meta_entry))
        if cached_outcome(known.get(prefix), files_digest(files)) is None:
            urls.append(base + prefix + ".index")
    return urls



class IndexFetcher:
    """Fetches ``.index`` objects ahead of reading them, and hands each out as a local file."""

    def __init__(self) -> None:
        # URL -> a future of {url: bytes or the error}, shared by the URLs fetched together.
        self._fetched: dict[str, Future] = {}
        self._scratch: tempfile.TemporaryDirectory | None = None
        self._copies = 0

    def prefetch(self, index_urls: list[str]) -> None:
        """Start fetching these ``.index`` objects (those not on their way already), concurrently,
        for the ``local_copy`` calls that follow."""
        wanted = [url for url in index_urls if url not in self._fetched]
        if wanted:
            future = storage.storage_for(wanted[0]).read_many_soon(wanted)
            self._fetched.update(dict.fromkeys(wanted, future))

    def local_copy(self, path_prefix: str) -> str:
        """A local file prefix holding the object's ``.index`` (only the index: listing variables
        never opens data files); remove ``PREFIX.index`` after reading it. Raises ``OSError`` when
        the object cannot be fetched (which says nothing about its bytes)."""
        url = path_prefix + ".index"
        pending = self._fetched.pop(url, None)
        data = pending.result()[url] if pending is not None else None
        if data is None:
            data = storage.storage_for(url).read_bytes(url)
        if isinstance(data, Exception):
            raise data if isinstance(data, OSError) else OSError(str(data))
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="index-copy-")
        # A new name each time, removed after reading: truncating one file over and over costs a
        # flush per write on ext4 (measured: 1.3 ms against 0.05 ms).
        self._copies += 1
        local = os.path.join(self._scratch.name, f"copy-{self._copies}")
        with open(local + ".index", "wb") as handle:
            handle.write(data)
        return local
