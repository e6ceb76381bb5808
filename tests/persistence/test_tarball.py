"""A directory's archive streamed from the directory: the bytes tarfile writes, any range of them, refusals."""

from __future__ import annotations

import hashlib
import io
import os
import random
import tarfile

import pytest

from persistence.tarball import ArchiveChanged, archive_layout, write_tar

# Sizes around the 512-byte block and the 10240-byte record, and one of several MB (chunked reads).
FILES = {
    "saved_model.pb": 12_345,
    "fingerprint.pb": 512,
    "variables/variables.index": 246,
    "variables/variables.data-00000-of-00001": 3 * (1 << 20) + 1,
    "assets/empty": 0,
    "assets/vocab-é.txt": 511,  # a non-ASCII name: encoded as tarfile encodes it
    "a-b/x": 1024,  # "a-b" sorts after "a/..." by path components, before it as a string
    "a/b/deep": 10_240,
}


@pytest.fixture
def directory(tmp_path):
    top = tmp_path / "probs.savedmodel"
    rng = random.Random(7)
    for name, size in FILES.items():
        path = top / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(size))
    return top


def _reference(directory) -> bytes:
    tar = str(directory) + ".tar"
    write_tar(directory, tar)
    with open(tar, "rb") as handle:
        data = handle.read()
    os.unlink(tar)
    return data


def test_streamed_archive_is_byte_for_byte_what_tarfile_writes(directory):
    reference = _reference(directory)
    layout = archive_layout(directory)

    assert layout.st_size == len(reference) and len(reference) % tarfile.RECORDSIZE == 0
    assert b"".join(layout.iter_bytes()) == reference
    assert layout.sha256() == hashlib.sha256(reference).hexdigest()
    assert layout.content_bytes == sum(FILES.values())


def test_the_archive_of_a_scratch_directory_is_named_as_the_final_one(directory, tmp_path):
    final = tmp_path / "final" / "m.savedmodel"
    final.parent.mkdir()
    expected = archive_layout(directory, top="m.savedmodel").sha256()
    os.rename(directory, final)
    assert archive_layout(final).sha256() == expected


def test_ranges_inside_members_across_member_boundaries_and_in_the_trailer(directory):
    reference = _reference(directory)
    layout = archive_layout(directory)
    big = next(m for m in layout.members if m.parts == ("variables", "variables.data-00000-of-00001"))
    small = next(m for m in layout.members if m.parts == ("saved_model.pb",))
    ranges = [
        (big.data_offset + 1_000_000, 3_000),  # the middle of a member's data
        (big.data_offset + (1 << 20) - 10, 20),  # across a chunk of a large member
        (small.offset + 100, 1_000),  # from a header into the data
        (small.data_offset + small.size - 5, 600),  # data, its padding, the next header
        (small.end - 1, 2),  # the last padding byte and the next header's first
        (layout.members[-1].end - 10, 2_000),  # the last member into the end-of-archive blocks
        (layout.st_size - 1, 1),
        (0, layout.st_size),
    ]
    rng = random.Random(3)
    ranges += [(start, rng.randrange(1, 40_000)) for start in rng.sample(range(layout.st_size), 200)]
    for start, length in ranges:
        assert b"".join(layout.iter_bytes(start, length)) == reference[start:start + length], (start, length)


def test_extracting_the_stream_with_tarfile_reproduces_the_directory(directory, tmp_path):
    data = b"".join(archive_layout(directory).iter_bytes())
    out = tmp_path / "out"
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(out, filter="data")
        assert {m.uid for m in archive.getmembers()} == {0} and {m.mtime for m in archive.getmembers()} == {946684800}
    for name in FILES:
        assert (out / "probs.savedmodel" / name).read_bytes() == (directory / name).read_bytes(), name
    extracted = {str(p.relative_to(out / "probs.savedmodel")) for p in (out / "probs.savedmodel").rglob("*")
                 if p.is_file()}
    assert extracted == set(FILES)


def test_a_file_changed_after_the_listing_stops_the_stream(directory):
    layout = archive_layout(directory)
    target = directory / "variables" / "variables.data-00000-of-00001"
    stat = target.stat()
    with open(target, "r+b") as handle:  # same size, other bytes
        handle.write(b"tampered")
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ArchiveChanged):
        b"".join(layout.iter_bytes())
    # Bytes before the changed member are still served (a resumed download of them is right).
    assert b"".join(layout.iter_bytes(0, 512))


def test_a_file_that_shrinks_while_it_is_read_is_not_padded_out(directory):
    layout = archive_layout(directory)
    target = directory / "variables" / "variables.data-00000-of-00001"
    stream = layout.iter_bytes()
    got = next(stream)
    # Shrunk in place, its mtime put back: the listing's size and mtime no longer tell, the read does.
    stat = target.stat()
    while True:
        chunk = next(stream)
        got += chunk
        if len(got) > layout.members[1].offset + 4096:
            break
    member = next(m for m in layout.members if m.parts == target.relative_to(directory).parts)
    with open(target, "r+b") as handle:
        handle.truncate(member.size // 2)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(ArchiveChanged):
        for chunk in stream:
            got += chunk
    assert len(got) < layout.st_size


def test_a_symlink_swapped_in_after_the_listing_is_not_followed(directory, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 246)
    layout = archive_layout(directory)
    index = directory / "variables" / "variables.index"
    os.utime(secret, ns=(index.stat().st_atime_ns, index.stat().st_mtime_ns))
    os.unlink(index)
    os.symlink(secret, index)
    with pytest.raises(ArchiveChanged, match="symbolic link"):
        b"".join(layout.iter_bytes())

    # A directory on the way swapped for a link to one holding the same names.
    elsewhere = tmp_path / "elsewhere"
    os.rename(directory / "variables", elsewhere)
    os.unlink(elsewhere / "variables.index")
    os.symlink(elsewhere, directory / "variables")
    with pytest.raises(ArchiveChanged):
        b"".join(layout.iter_bytes())


@pytest.mark.parametrize("what", ["file link", "directory link", "fifo"])
def test_links_and_special_files_in_the_directory_are_refused(directory, tmp_path, what):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"secret")
    if what == "file link":
        os.symlink(outside / "passwd", directory / "assets" / "passwd")
    elif what == "directory link":
        os.symlink(outside, directory / "assets" / "more")
    else:
        os.mkfifo(directory / "assets" / "pipe")
    with pytest.raises(ArchiveChanged):
        archive_layout(directory)


def test_the_directory_itself_as_a_link_is_refused(directory, tmp_path):
    link = tmp_path / "link.savedmodel"
    os.symlink(directory, link)
    with pytest.raises(ArchiveChanged):
        archive_layout(link)


def test_adding_or_touching_a_file_moves_the_layouts_size_or_mtime(directory):
    # Made a while ago, as an export is when it is checked (mtimes have a clock tick's resolution).
    for path in [directory, *directory.rglob("*")]:
        os.utime(path, ns=(0, path.stat().st_mtime_ns - 60 * 10**9))
    before = archive_layout(directory)
    (directory / "assets" / "extra").write_bytes(b"")  # an empty file: its header may fit the padding
    added = archive_layout(directory)
    assert (added.st_size, added.st_mtime_ns) != (before.st_size, before.st_mtime_ns)
    assert added.st_mtime_ns > before.st_mtime_ns  # its directory's mtime moved
