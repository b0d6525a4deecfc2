"""Requests carrying a NUL character are answered 400 before any view reads them.

No field of this site accepts NUL, and PostgreSQL cannot even compare a text column with a
string that holds one: a NUL in a URL, a search box or a form reached the database and came
back as a server error (DataError) instead of a clear answer. Django's form fields refuse it
already; this covers everything else (URL tokens, ``?q=``, hand-written forms) in one place.
"""
from django.http import HttpResponseBadRequest

NUL = "\x00"


def _has_nul(query_dict):
    return any(NUL in key or any(NUL in value for value in values) for key, values in query_dict.lists())


class RefuseNulMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if NUL in request.path_info or _has_nul(request.GET) or _posted_nul(request):
            return HttpResponseBadRequest(
                "The request contains a NUL character (%00), which no page of this site accepts.",
                content_type="text/plain; charset=utf-8",
            )
        # A cookie with a NUL (session or other) is dropped: the browser gets a fresh session
        # rather than an error it cannot get rid of.
        for name in [name for name, value in request.COOKIES.items() if NUL in name or NUL in value]:
            del request.COOKIES[name]
        return self.get_response(request)


def _posted_nul(request):
    if request.method != "POST":
        return False
    try:
        return _has_nul(request.POST)  # the CSRF check parses the body anyway; this only reads it first
    except OSError:  # the client went away mid-upload: the CSRF check answers that, as before
        return False
