"""Directory exports (SavedModel) download as a .tar streamed from the directory: the page and the API,
whole and by range, with X-Accel-Redirect on, after a change on disk, and for exports that wrote a .tar."""

from __future__ import annotations

import io
import os
import random
import tarfile

import pytest
from django.urls import reverse

from dashboard import rechecking
from dashboard.models import Checkpoint, Export, Run
from dashboard.models.export import ARCHIVE_STREAMED
from persistence.tarball import archive_layout, write_tar
from tests.dashboard.conftest import add_checkpoint_rows

pytestmark = pytest.mark.django_db

FILES = {"saved_model.pb": 5_000, "fingerprint.pb": 54, "variables/variables.index": 246,
         "variables/variables.data-00000-of-00001": 2 * (1 << 20) + 77}


def _reference(directory) -> bytes:
    """What tarfile writes for the directory (the bytes the recorded sha256 is of)."""
    tar = str(directory) + ".reference"
    write_tar(directory, tar)
    with open(tar, "rb") as handle:
        data = handle.read()
    os.unlink(tar)
    return data


@pytest.fixture
def export(checkpoint_root, settings) -> Export:
    """A SavedModel export row and its directory (random bytes: downloads never parse them)."""
    directory = checkpoint_root / "demo"
    directory.mkdir()
    run = Run.objects.create(name="demo", directory=str(directory))
    add_checkpoint_rows(run, 1, start_step=300)
    top = settings.EXPORT_ROOT / "demo" / "300" / "probs.savedmodel"
    rng = random.Random(5)
    for name, size in FILES.items():
        (top / name).parent.mkdir(parents=True, exist_ok=True)
        (top / name).write_bytes(rng.randbytes(size))
    for path in [top, *top.rglob("*")]:  # made a minute ago: a later change moves the newest mtime
        os.utime(path, ns=(0, path.stat().st_mtime_ns - 60 * 10**9))
    layout = archive_layout(top)
    return Export.objects.create(checkpoint=Checkpoint.objects.get(run=run), kind=Export.SAVED_MODEL, path=str(top),
                                 size_bytes=layout.st_size, sha256=layout.sha256(), outputs=["probs"], verified=True,
                                 file_mtime_ns=layout.st_mtime_ns, verification={"archive": ARCHIVE_STREAMED})


def url(export: Export) -> str:
    return reverse("export-download", args=[export.pk])


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def test_the_whole_archive_is_what_tarfile_writes_and_extracts_to_the_directory(client, viewer, export, tmp_path):
    reference = _reference(export.path)
    client.force_login(viewer)
    response = client.get(url(export))
    assert response.status_code == 200 and response["Content-Length"] == str(len(reference))
    assert response["ETag"] == f'"{export.sha256}"' and response["Accept-Ranges"] == "bytes"
    assert response["Content-Disposition"] == 'attachment; filename="demo-step300-probs.tar"'
    data = body(response)
    assert data == reference
    with tarfile.open(fileobj=io.BytesIO(data)) as archive:
        archive.extractall(tmp_path / "out", filter="data")
    for name in FILES:
        assert (tmp_path / "out" / "probs.savedmodel" / name).read_bytes() == open(os.path.join(export.path, name),
                                                                                     "rb").read()
    # Nothing was written beside the directory to serve it.
    assert sorted(os.listdir(os.path.dirname(export.path))) == ["probs.savedmodel"]


def test_ranges_into_a_member_and_across_member_boundaries(client, viewer, export):
    reference = _reference(export.path)
    layout = archive_layout(export.path)
    data = next(m for m in layout.members if m.parts == ("variables", "variables.data-00000-of-00001"))
    graph = next(m for m in layout.members if m.parts == ("saved_model.pb",))
    client.force_login(viewer)
    for first, last in [
        (data.data_offset + 1_234_567, data.data_offset + 1_300_000),  # inside one member's bytes
        (graph.data_offset + graph.size - 10, graph.end + 600),  # data, padding, the next header, its data
        (graph.offset + 3, graph.data_offset + 3),  # a header into its data
        (layout.members[-1].end - 100, layout.st_size - 1),  # into the end-of-archive blocks
    ]:
        response = client.get(url(export), HTTP_RANGE=f"bytes={first}-{last}", HTTP_IF_RANGE=f'"{export.sha256}"')
        assert response.status_code == 206, (first, last)
        assert response["Content-Range"] == f"bytes {first}-{last}/{len(reference)}"
        assert response["Content-Length"] == str(last - first + 1)
        assert body(response) == reference[first:last + 1], (first, last)
    suffix = client.get(url(export), HTTP_RANGE="bytes=-700")
    assert suffix.status_code == 206 and body(suffix) == reference[-700:]
    beyond = client.get(url(export), HTTP_RANGE=f"bytes={len(reference)}-")
    assert beyond.status_code == 416 and beyond["Content-Range"] == f"bytes */{len(reference)}"
    stale = client.get(url(export), HTTP_RANGE="bytes=10-20", HTTP_IF_RANGE='"stale"')
    assert stale.status_code == 200 and body(stale) == reference
    assert client.get(url(export), HTTP_IF_NONE_MATCH=f'"{export.sha256}"').status_code == 304


def test_the_api_serves_the_same_archive_and_ranges(client, viewer, export):
    reference = _reference(export.path)
    client.force_login(viewer)
    api = f"/api/v1/exports/{export.pk}/download"
    assert body(client.get(api)) == reference
    part = client.get(api, HTTP_RANGE="bytes=1000-9999")
    assert part.status_code == 206 and body(part) == reference[1000:10000]


def test_with_x_accel_redirect_on_a_directory_is_streamed_by_the_application(client, viewer, export, settings):
    settings.DOWNLOAD_X_ACCEL_REDIRECT = "/protected-exports/"
    client.force_login(viewer)
    response = client.get(url(export))
    assert response.status_code == 200 and "X-Accel-Redirect" not in response
    assert body(response) == _reference(export.path)
    part = client.get(url(export), HTTP_RANGE="bytes=600-1600")
    assert part.status_code == 206 and "X-Accel-Redirect" not in part and len(body(part)) == 1001


def test_a_file_changed_after_the_export_is_not_served_and_the_recheck_refuses_it(client, viewer, export):
    index = os.path.join(export.path, "variables", "variables.index")
    original = open(index, "rb").read()
    with open(index, "r+b") as handle:  # same size, other bytes
        handle.write(b"tampered")
    client.force_login(viewer)
    response = client.get(url(export))
    assert response.status_code == 404 and "changed on disk" in response.content.decode()
    assert not rechecking.recheck_export(export)
    export.refresh_from_db()
    assert export.disk_change() and client.get(url(export)).status_code == 404

    # Put back byte for byte: the recheck accepts it and downloads resume.
    with open(index, "wb") as handle:
        handle.write(original)
    assert rechecking.recheck_export(export)
    assert export.disk_change() is None and body(client.get(url(export))) == _reference(export.path)


def test_a_file_added_to_the_directory_is_a_change(client, viewer, export):
    open(os.path.join(export.path, "variables", "extra"), "wb").close()
    client.force_login(viewer)
    assert client.get(url(export)).status_code == 404
    assert not rechecking.recheck_export(export)


def test_a_change_in_the_middle_of_a_download_ends_it_short(client, viewer, export):
    client.force_login(viewer)
    response = client.get(url(export))
    stream = iter(response.streaming_content)
    got = next(stream)
    data = os.path.join(export.path, "variables", "variables.data-00000-of-00001")
    with open(data, "r+b") as handle:
        handle.write(b"changed")
    with pytest.raises(OSError):
        for chunk in stream:
            got += chunk
    assert len(got) < export.size_bytes
    response.close()


def test_a_missing_directory_or_links_in_it_are_not_served(client, viewer, export, tmp_path):
    client.force_login(viewer)
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 246)
    index = os.path.join(export.path, "variables", "variables.index")
    os.unlink(index)
    os.symlink(secret, index)
    response = client.get(url(export))
    assert response.status_code == 404 and "symbolic link" in response.content.decode()
    assert b"s" * 246 not in response.content

    os.rename(export.path, str(tmp_path / "moved"))
    response = client.get(url(export))
    assert response.status_code == 404 and "missing on disk" in response.content.decode()
    os.symlink(tmp_path / "moved", export.path)  # a link out of the export root
    assert client.get(url(export)).status_code == 403


def test_an_export_that_wrote_a_tar_beside_it_downloads_from_the_directory(client, viewer, export):
    """Exports recorded before archives were streamed: the row holds the .tar's mtime, written once
    the directory was complete. They download (from the directory) until something in it is newer."""
    tar = export.path + ".tar"
    size, sha256 = write_tar(export.path, tar)
    assert (size, sha256) == (export.size_bytes, export.sha256)
    Export.objects.filter(pk=export.pk).update(file_mtime_ns=os.stat(tar).st_mtime_ns, verification={})
    export.refresh_from_db()
    client.force_login(viewer)
    assert export.disk_change() is None
    os.unlink(tar)  # not what is served
    assert body(client.get(url(export))) == _reference(export.path)

    index = os.path.join(export.path, "variables", "variables.index")
    os.utime(index, ns=(0, export.file_mtime_ns + 10**9))
    assert export.disk_change() == "modified after it was verified"
    assert client.get(url(export)).status_code == 404
    assert rechecking.recheck_export(export)  # the same bytes: now recorded from the directory
    export.refresh_from_db()
    assert export.streams_archive and export.file_mtime_ns == archive_layout(export.path).st_mtime_ns
    assert body(client.get(url(export))) == _reference(export.path)
