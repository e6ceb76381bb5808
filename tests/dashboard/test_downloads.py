"""Export downloads: by id only, streamed, ETag = sha256, HTTP ranges, login, permission, path containment."""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from dashboard.models import Checkpoint, Export, Run
from tests.dashboard.conftest import add_checkpoint_rows

pytestmark = pytest.mark.django_db

SIZE = 300_000  # several 64 kB FileResponse blocks, so streaming is exercised


@pytest.fixture
def export(checkpoint_root, settings) -> Export:
    """An export row and its file under EXPORT_ROOT (bytes, not a graph: downloads never parse it)."""
    directory = checkpoint_root / "demo"
    directory.mkdir()
    run = Run.objects.create(name="demo", directory=str(directory))
    add_checkpoint_rows(run, 1, start_step=300)
    checkpoint = Checkpoint.objects.get(run=run)
    data = os.urandom(SIZE)
    path = settings.EXPORT_ROOT / "demo" / "300" / "probs.pb"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return Export.objects.create(checkpoint=checkpoint, path=str(path), size_bytes=SIZE,
                                 sha256=hashlib.sha256(data).hexdigest(), outputs=["probs"], verified=True)


def body(response) -> bytes:
    return b"".join(response.streaming_content)


def url(export: Export) -> str:
    return reverse("export-download", args=[export.pk])


def test_download_streams_the_whole_file_with_length_etag_and_a_server_chosen_name(client, viewer, export):
    client.force_login(viewer)
    response = client.get(url(export))
    assert response.status_code == 200 and response.streaming
    data = body(response)
    assert hashlib.sha256(data).hexdigest() == export.sha256
    assert response["Content-Length"] == str(SIZE)
    assert response["ETag"] == f'"{export.sha256}"'
    assert response["Accept-Ranges"] == "bytes"
    assert response["Content-Disposition"] == 'attachment; filename="demo-step300-probs.pb"'
    assert response["Content-Type"] == "application/octet-stream"


def test_range_request_returns_206_with_exactly_those_bytes(client, viewer, export):
    client.force_login(viewer)
    data = open(export.path, "rb").read()
    cases = {"bytes=100-199": (100, 199), "bytes=299990-": (299990, SIZE - 1), "bytes=-10": (SIZE - 10, SIZE - 1),
             "bytes=0-0": (0, 0), f"bytes=5-{SIZE * 2}": (5, SIZE - 1)}
    for header, (first, last) in cases.items():
        response = client.get(url(export), HTTP_RANGE=header)
        assert response.status_code == 206, header
        assert body(response) == data[first:last + 1], header
        assert response["Content-Range"] == f"bytes {first}-{last}/{SIZE}", header
        assert response["Content-Length"] == str(last - first + 1), header
        assert response["ETag"] == f'"{export.sha256}"'


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 5}-{SIZE + 9}", "bytes=9-2", "bytes=-0",
                                    "bytes=x-y", "bytes=-"])
def test_unsatisfiable_or_malformed_range_is_416(client, viewer, export, header):
    client.force_login(viewer)
    response = client.get(url(export), HTTP_RANGE=header)
    assert response.status_code == 416
    assert response["Content-Range"] == f"bytes */{SIZE}"


@pytest.mark.parametrize("headers", [{"HTTP_RANGE": "bytes=0-1,5-6"}, {"HTTP_RANGE": "items=0-5"},
                                     {"HTTP_RANGE": "bytes=0-5", "HTTP_IF_RANGE": '"stale-etag"'}])
def test_multiple_ranges_other_units_and_stale_if_range_get_the_whole_file(client, viewer, export, headers):
    client.force_login(viewer)
    response = client.get(url(export), **headers)
    assert response.status_code == 200
    assert len(body(response)) == SIZE


def test_if_range_with_the_current_etag_honours_the_range(client, viewer, export):
    client.force_login(viewer)
    response = client.get(url(export), HTTP_RANGE="bytes=10-19", HTTP_IF_RANGE=f'"{export.sha256}"')
    assert response.status_code == 206 and len(body(response)) == 10


def test_if_none_match_with_the_etag_is_304(client, viewer, export):
    client.force_login(viewer)
    response = client.get(url(export), HTTP_IF_NONE_MATCH=f'"{export.sha256}"')
    assert response.status_code == 304


def test_not_logged_in_is_sent_to_the_login_page(client, export):
    response = client.get(url(export))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login"))


def test_a_user_without_a_role_is_refused(client, export):
    client.force_login(User.objects.create_user("nobody", password="pw-for-tests-only"))
    assert client.get(url(export)).status_code == 403


def test_unknown_export_id_is_404(client, viewer, export):
    client.force_login(viewer)
    assert client.get(reverse("export-download", args=[export.pk + 1000])).status_code == 404


def test_removed_file_is_a_404_page_that_says_so(client, viewer, export):
    os.unlink(export.path)
    client.force_login(viewer)
    response = client.get(url(export))
    assert response.status_code == 404
    html = response.content.decode()
    assert "missing on disk" in html and "demo-step300-probs.pb" in html
    assert "Freeze the checkpoint again" in html


def test_a_file_of_another_size_than_recorded_is_not_served(client, viewer, export):
    with open(export.path, "r+b") as handle:
        handle.truncate(100)
    client.force_login(viewer)
    response = client.get(url(export))
    assert response.status_code == 404
    assert "not the 300000 recorded" in response.content.decode()


def test_export_row_pointing_outside_the_export_root_is_refused(client, viewer, export, tmp_path):
    secret = tmp_path / "secret.pb"
    secret.write_bytes(b"x" * SIZE)
    client.force_login(viewer)
    for path in (str(secret), f"{export.path}/../../../../secret.pb", "/etc/passwd"):
        Export.objects.filter(pk=export.pk).update(path=path)
        response = client.get(url(export))
        assert response.status_code == 403, path
        assert b"x" * 100 not in response.content


def test_symlink_inside_the_export_root_that_leaves_it_is_refused(client, viewer, export, tmp_path):
    secret = tmp_path / "secret.pb"
    secret.write_bytes(b"s" * SIZE)
    os.unlink(export.path)
    os.symlink(secret, export.path)
    client.force_login(viewer)
    assert client.get(url(export)).status_code == 403


def test_x_accel_redirect_hands_the_file_to_nginx(client, viewer, export, settings):
    settings.DOWNLOAD_X_ACCEL_REDIRECT = "/protected-exports/"
    client.force_login(viewer)
    response = client.get(url(export))
    assert response.status_code == 200
    assert response["X-Accel-Redirect"] == "/protected-exports/demo/300/probs.pb"
    assert response["Content-Disposition"] == 'attachment; filename="demo-step300-probs.pb"'
    assert response.content == b""


def test_exports_list_filters_by_run_and_detail_shows_the_download(client, viewer, export, checkpoint_root):
    other_dir = checkpoint_root / "other"
    other_dir.mkdir()
    other = Run.objects.create(name="other", directory=str(other_dir))
    add_checkpoint_rows(other, 1, start_step=7)
    Export.objects.create(checkpoint=other.checkpoints.get(), path=str(other_dir / "x.pb"), sha256="ab" * 32,
                          outputs=["logits"], max_abs_diff=0.5, verified=False)
    client.force_login(viewer)
    html = client.get(reverse("exports")).content.decode()
    assert "demo" in html and "other" in html and export.sha256[:12] in html
    assert "verified · max diff" in html and "not verified" in html
    filtered = client.get(reverse("exports"), {"run": "demo"}).content.decode()
    assert url(export) in filtered and "logits" not in filtered and "x.pb" not in filtered
    detail = client.get(reverse("export", args=[export.pk])).content.decode()
    assert url(export) in detail and export.sha256 in detail and "demo-step300-probs.pb" in detail


@pytest.mark.django_db(transaction=True)
def test_curl_resumes_an_interrupted_download_with_c_dash(live_server, export, tmp_path):
    from django.conf import settings as django_settings
    from django.contrib.sessions.backends.db import SessionStore

    # A superuser: role groups come from a data migration, which a transactional test's flush removes.
    viewer = User.objects.create_superuser("curl-user", password="pw-for-tests-only")

    session = SessionStore()
    session["_auth_user_id"] = str(viewer.pk)
    session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
    session["_auth_user_hash"] = viewer.get_session_auth_hash()
    session.create()
    partial = tmp_path / "download.pb"
    partial.write_bytes(open(export.path, "rb").read()[:123_457])  # an interrupted first attempt
    result = subprocess.run(
        ["curl", "--silent", "--show-error", "--fail", "-C", "-", "-o", str(partial), "-w", "%{http_code}",
         "--cookie", f"{django_settings.SESSION_COOKIE_NAME}={session.session_key}", live_server.url + url(export)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "206"
    assert hashlib.sha256(partial.read_bytes()).hexdigest() == export.sha256
