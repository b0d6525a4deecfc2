"""A scripted annotator speaking plain HTTP to a running server (concurrency test and benchmark).

It does what the browser does: GET the round's "next" URL (following the redirect to the item
page), read the form (CSRF token, submission key, shown labels), POST a random valid answer.
"""
import random
import re
import time
from dataclasses import dataclass, field

import requests

_CSRF = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')
_KEY = re.compile(r'name="key" value="([^"]+)"')
_ACTION = re.compile(r'<form method="post" action="(/annotate/i/[^"/]+/)" id="he-answer"')
_LABEL = re.compile(r'id="he-resp-([A-Z]+)"')


def session_for(user):
    """A logged-in session key for ``user`` without a password round trip (runs where Django is set up)."""
    from django.conf import settings
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.db import SessionStore

    s = SessionStore()
    s[SESSION_KEY] = str(user.pk)
    s[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0] if hasattr(settings, "AUTHENTICATION_BACKENDS") \
        else "django.contrib.auth.backends.ModelBackend"
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
        self.http = requests.Session()
        self.http.cookies.set("sessionid", self.session_key)
        self.rng = random.Random(self.seed)

    def next_item(self):
        """The next item page, or None when the round has nothing left for this annotator."""
        t = time.perf_counter()
        r = self.http.get(f"{self.base_url}/annotate/r/{self.round_id}/next/", timeout=30)
        self.timings["next"].append(time.perf_counter() - t)
        if r.status_code != 200:
            self.errors.append(f"next: HTTP {r.status_code}")
            return None
        html = r.text
        action = _ACTION.search(html)
        if action is None:
            return None  # the "done" page
        self.http.headers["Referer"] = r.url
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
        r = self.http.post(self.base_url + page.action, data=data, allow_redirects=False, timeout=30)
        self.timings["submit"].append(time.perf_counter() - t)
        ok = r.status_code == 302 and r.headers.get("Location", "").endswith(f"/annotate/r/{self.round_id}/next/")
        if ok:
            self.acknowledged.append((page.action, page.key))
        else:
            self.errors.append(f"submit: HTTP {r.status_code}")
        return ok
