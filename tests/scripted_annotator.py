"""A scripted annotator speaking plain HTTP to a running server (concurrency test and benchmark).

It does what the browser does: GET the round's "next" URL (following the redirect to the item
page), read the form (CSRF token, submission key, shown labels), POST a random valid answer.
It speaks HTTP with the standard library's ``http.client`` and keeps its own cookies: the
benchmark runs fifty of these on the same CPUs as the server, and ``requests`` spends about
four times as much CPU per request, time that would be taken from the server being measured.
"""
import http.client
import random
import re
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from urllib.parse import urlencode, urljoin, urlsplit

_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_KEY = re.compile(r'name="key" value="([^"]+)"')
_ACTION = re.compile(r'<form method="post" action="(/annotate/i/[^"/]+/)" id="he-answer"')
_LABEL = re.compile(r'id="he-resp-([A-Z]+)"')


def session_for(user):
    """A logged-in session key for ``user`` without a password round trip (runs where Django is set up)."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY, load_backend

    s = import_module(settings.SESSION_ENGINE).SessionStore()
    s[SESSION_KEY] = str(user.pk)
    # The first backend that loads users, as Django's test client picks one (axes' comes first
    # and only checks login attempts).
    s[BACKEND_SESSION_KEY] = next(
        path for path in settings.AUTHENTICATION_BACKENDS if hasattr(load_backend(path), "get_user")
    )
    s[HASH_SESSION_KEY] = user.get_session_auth_hash()
    s.create()
    return s.session_key


@dataclass
class ItemPage:
    action: str
    csrf: str
    key: str
    labels: list
    asks_rank: bool
    asks_harmless: bool


@dataclass
class Annotator:
    base_url: str
    session_key: str
    round_id: int
    seed: int = 0
    timings: dict = field(default_factory=lambda: {"next": [], "submit": []})
    acknowledged: list = field(default_factory=list)  # (action, key) of submissions the server accepted
    errors: list = field(default_factory=list)

    def __post_init__(self):
        self.cookies = {"sessionid": self.session_key}
        self.referer = None
        self.rng = random.Random(self.seed)
        self.host, self.port = urlsplit(self.base_url).hostname, urlsplit(self.base_url).port

    def request(self, method, path, data=None, follow=True, timeout=30):
        """(status, headers, body, url) of one request; follows GET redirects when ``follow``."""
        for _ in range(10):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
            if self.referer:
                headers["Referer"] = self.referer
            body = None
            if data is not None:
                body = urlencode(data)
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                content = r.read()
            finally:
                conn.close()
            for header in r.headers.get_all("Set-Cookie") or []:
                for name, morsel in SimpleCookie(header).items():
                    if morsel["max-age"] == "0" or morsel.value == "":
                        self.cookies.pop(name, None)
                    else:
                        self.cookies[name] = morsel.value
            location = r.headers.get("Location")
            if follow and r.status in (301, 302, 303) and location:
                method, data, path = "GET", None, urlsplit(urljoin(path, location)).path
                continue
            return r.status, r.headers, content.decode(), self.base_url + path
        raise RuntimeError(f"too many redirects from {path}")

    def next_item(self):
        """The next item page, or None when the round has nothing left for this annotator."""
        t = time.perf_counter()
        status, _, html, url = self.request("GET", f"/annotate/r/{self.round_id}/next/")
        self.timings["next"].append(time.perf_counter() - t)
        if status != 200:
            self.errors.append(f"next: HTTP {status}")
            return None
        action = _ACTION.search(html)
        if action is None:
            return None  # the "done" page
        self.referer = url
        return ItemPage(
            action=action.group(1), csrf=_CSRF.search(html).group(1), key=_KEY.search(html).group(1),
            labels=_LABEL.findall(html), asks_rank='name="rank_' in html, asks_harmless='name="harmless_' in html,
        )

    def answer(self, page):
        data = {"csrfmiddlewaretoken": page.csrf, "key": page.key, "elapsed_ms": str(self.rng.randint(2000, 60000))}
        if page.asks_rank:
            ranks = list(range(1, len(page.labels) + 1))
            self.rng.shuffle(ranks)
            data.update({f"rank_{label}": str(r) for label, r in zip(page.labels, ranks)})
        if page.asks_harmless:
            data.update({f"harmless_{label}": self.rng.choice(["harmless", "harmful"]) for label in page.labels})
        return data

    def submit(self, page, data=None):
        """POST the answer; True when the server accepted it (a redirect to the next item)."""
        data = data or self.answer(page)
        t = time.perf_counter()
        status, headers, _, _ = self.request("POST", page.action, data=data, follow=False)
        self.timings["submit"].append(time.perf_counter() - t)
        ok = status == 302 and headers.get("Location", "").endswith(f"/annotate/r/{self.round_id}/next/")
        if ok:
            self.acknowledged.append((page.action, page.key))
        else:
            self.errors.append(f"submit: HTTP {status}")
        return ok
