"""Login throttling (django-axes): wrong passwords lock out one username from one address."""
import runpy
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.core.management import call_command
from django.http import HttpRequest
from django.db import connection
from django.test import Client, modify_settings
from django.test.utils import CaptureQueriesContext

from tests.humaneval_demo import make_annotators, make_round

pytestmark = pytest.mark.django_db

ATTACKER, FRIEND = "203.0.113.66", "198.51.100.7"
PASSWORD = "pw-alice-correct-horse"
LOCKED_OUT = "Too many failed logins"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password=PASSWORD)


def log_in(client, password, address, path="/login/", username="alice", **headers):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address, **headers)


def logged_in_as(client):
    """The username the client's session is logged in as, or None."""
    r = client.get("/")
    return r.context["user"].get_username() if r.status_code == 200 else None


def lock_out(client, address, path="/login/", username="alice"):
    limit = django_settings.AXES_FAILURE_LIMIT
    for _ in range(limit - 1):
        r = log_in(client, "wrong", address, path, username)
        assert r.status_code == 200 and LOCKED_OUT not in r.text  # an ordinary "try again"
    r = log_in(client, "wrong", address, path, username)
    assert r.status_code == 429
    return r


def test_the_limit_of_wrong_passwords_locks_that_username_out_from_that_address_only(alice, django_user_model):
    django_user_model.objects.create_user("bob", password=PASSWORD)
    assert django_settings.AXES_FAILURE_LIMIT == 10 and django_settings.AXES_COOLOFF_TIME == timedelta(minutes=15)
    r = lock_out(Client(), ATTACKER)
    assert LOCKED_OUT in r.text and "failed 10 times" in r.text and "Try again in 15 minutes" in r.text

    # Even the right password is refused, with the same page, and logs nobody in.
    client = Client()
    r = log_in(client, PASSWORD, ATTACKER)
    assert r.status_code == 429 and LOCKED_OUT in r.text
    assert logged_in_as(client) is None

    # Alice herself, from another address, logs in as usual; so does Bob from the attacker's address.
    for username, address in [("alice", FRIEND), ("bob", ATTACKER)]:
        client = Client()
        r = log_in(client, PASSWORD, address, username=username)
        assert r.status_code == 302 and r.url == "/"
        assert logged_in_as(client) == username


def test_a_successful_login_clears_the_count(alice):
    client = Client()
    for _ in range(django_settings.AXES_FAILURE_LIMIT - 1):
        log_in(client, "wrong", FRIEND)
    assert log_in(client, PASSWORD, FRIEND).status_code == 302
    client.logout()
    for _ in range(django_settings.AXES_FAILURE_LIMIT - 1):
        assert log_in(client, "wrong", FRIEND).status_code == 200  # counting from zero again
    assert log_in(client, PASSWORD, FRIEND).status_code == 302


def test_the_lockout_ends_after_the_cool_off(alice):
    from axes.models import AccessAttempt

    lock_out(Client(), ATTACKER)
    cool_off = django_settings.AXES_COOLOFF_TIME

    def wait(delta):
        # Time passes for axes as the age of the recorded attempts.
        AccessAttempt.objects.update(attempt_time=AccessAttempt.objects.get().attempt_time - delta)

    wait(cool_off - timedelta(minutes=1))
    assert log_in(Client(), PASSWORD, ATTACKER).status_code == 429  # a minute early; the wait starts again
    wait(cool_off + timedelta(seconds=1))
    client = Client()
    assert log_in(client, PASSWORD, ATTACKER).status_code == 302
    assert logged_in_as(client) == "alice"


def test_axes_reset_lifts_the_lockout_at_once(alice):
    lock_out(Client(), ATTACKER)
    call_command("axes_reset")
    assert log_in(Client(), PASSWORD, ATTACKER).status_code == 302


def test_the_admin_login_is_throttled_too(researcher):
    r = lock_out(Client(), ATTACKER, path="/admin/login/", username="researcher")
    assert LOCKED_OUT in r.text
    client = Client()
    r = log_in(client, "pw-researcher", ATTACKER, path="/admin/login/", username="researcher")
    assert r.status_code == 429 and LOCKED_OUT in r.text
    assert client.get("/admin/").status_code == 302  # still sent to the login page
    # The site's own login page counts against the same username and address.
    assert log_in(Client(), "pw-researcher", ATTACKER, username="researcher").status_code == 429


def test_behind_a_reverse_proxy_the_address_the_proxy_saw_counts(alice, settings, monkeypatch):
    """AXES_REVERSE_PROXIES=1 (gunicorn behind nginx): the right-most X-Forwarded-For entry is the
    client; whatever the client wrote to the left of it cannot move it to another counter."""
    monkeypatch.setenv("AXES_REVERSE_PROXIES", "1")
    proxied = runpy.run_path(str(django_settings.BASE_DIR / "evalsite" / "settings.py"))
    for name in ("AXES_IPWARE_META_PRECEDENCE_ORDER", "AXES_IPWARE_PROXY_ORDER", "AXES_IPWARE_PROXY_COUNT",
                 "IPWARE_STRICT"):
        setattr(settings, name, proxied[name])
    proxy = "10.0.0.2"
    client = Client()
    for i in range(django_settings.AXES_FAILURE_LIMIT):
        # A new forged address each time, in front of the one nginx appended.
        r = log_in(client, "wrong", proxy, HTTP_X_FORWARDED_FOR=f"192.0.2.{i}, {ATTACKER}")
    assert r.status_code == 429
    assert log_in(Client(), PASSWORD, proxy, HTTP_X_FORWARDED_FOR=ATTACKER).status_code == 429
    # Everyone else comes through the same proxy too, and is not locked out with the attacker.
    assert log_in(Client(), PASSWORD, proxy, HTTP_X_FORWARDED_FOR=FRIEND).status_code == 302


def test_the_test_clients_logins_still_work(alice):
    client = Client()
    client.force_login(alice)
    assert logged_in_as(client) == "alice"
    # Django's client.login() calls authenticate() without a request, which axes refuses to judge;
    # give it one, as axes' documentation says.
    client = Client()
    assert client.login(request=HttpRequest(), username="alice", password=PASSWORD)
    assert logged_in_as(client) == "alice"


def test_axes_adds_no_query_to_an_annotators_request():
    (annotator,) = make_annotators(1, prefix="throttle")
    rnd = make_round(n_prompts=3, overlap=1, name="throttle round")
    url = f"/annotate/r/{rnd.pk}/next/"

    def queries(changes):
        with changes:
            client = Client()
            client.force_login(annotator)
            assert client.get(url).status_code == 200  # the lease is taken; reloads return it
            with CaptureQueriesContext(connection) as ctx:
                assert client.get(url).status_code == 200
            return len(ctx.captured_queries)

    with_axes = queries(modify_settings())
    without_axes = queries(modify_settings(MIDDLEWARE={"remove": "axes.middleware.AxesMiddleware"}))
    assert with_axes == without_axes
