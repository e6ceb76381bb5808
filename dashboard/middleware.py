"""Request checks that apply to every view."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class RejectNulBytesMiddleware:
    """Answer 400 to a request whose path, query or form values contain a NUL byte.

    No name, path or filter of ours can contain one, PostgreSQL refuses them in text values (a
    filter like ``?run=%00`` would otherwise end in a database error), and file APIs refuse them
    too: one check here instead of one in every view and form.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path_info or any(
            "\x00" in key or any("\x00" in value for value in values)
            for query in ((request.GET, request.POST) if request.method == "POST" else (request.GET,))
            for key, values in query.lists()
        ):
            return HttpResponseBadRequest("A NUL byte is not allowed in a request.", content_type="text/plain")
        return self.get_response(request)
