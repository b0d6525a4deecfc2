"""The Jinja2 environment for the few pages rendered on every request an annotator makes.

Most pages are Django templates. The item page is shown once per item to every annotator;
Django's template engine spent a third of that request's CPU rendering it, and Jinja2, which
compiles templates to Python, renders the same page about three times faster. Templates live in
``jinja2/`` and in the apps' ``jinja2/`` folders (the item page in ``evalsite/humaneval/jinja2/``);
``jinja2/base.html`` carries the same site header as ``templates/base.html`` (a test compares the
two).
"""
import re
from functools import lru_cache

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.template.backends.utils import csrf_input
from django.templatetags.static import static
from django.template.defaultfilters import linebreaks_filter
from django.urls import NoReverseMatch, get_script_prefix, get_urlconf, reverse
from django.utils import timezone
from django.utils.text import capfirst
from jinja2 import Environment


def url(name, *args, **kwargs):
    if kwargs:
        return reverse(name, kwargs=kwargs)
    texts = [str(a) for a in args]
    parts = None
    if all(map(_PLAIN.fullmatch, texts)):
        parts = _url_parts(name, len(texts), get_script_prefix(), get_urlconf())
    if parts is None:
        return reverse(name, args=args or None)
    return "".join(part + text for part, text in zip(parts, texts)) + parts[-1]


_PLAIN = re.compile(r"[A-Za-z0-9_-]+")  # a path segment that needs no quoting


@lru_cache(maxsize=256)
def _url_parts(name, n_args, prefix, urlconf):
    """The URL ``name`` cut where its arguments go (``["/annotate/i/", "/skip/"]``), or None.

    reverse() resolves the pattern again on every call (20 us, several times per item page);
    a URL without arguments (the header's links) is one part. The parts come from one reverse()
    with numbered markers, which int, str, slug and path converters accept. Arguments are then
    pasted in only when they are plain path segments, and they are not checked against the
    converters (an int argument given letters makes a URL that does not resolve instead of
    raising NoReverseMatch).
    """
    markers = [f"918273645{i}" for i in range(n_args)]
    try:
        text = reverse(name, args=markers, urlconf=urlconf)
    except NoReverseMatch:
        return None
    parts = []
    for marker in markers:
        if text.count(marker) != 1:
            return None
        head, text = text.split(marker)
        parts.append(head)
    return parts + [text]


@lru_cache(maxsize=256)
def _static(path):
    # A file's URL is fixed while the process runs (with the manifest too: it is read at start).
    return static(path)


@lru_cache(maxsize=64)
def _linebreaks(text):
    return linebreaks_filter(text, autoescape=True)  # a round's instructions: the same text on every page


@receiver(setting_changed)
def _forget_urls(setting, **kwargs):
    if setting in ("ROOT_URLCONF", "STATIC_URL", "STORAGES", "STATIC_ROOT"):  # tests that change them
        _url_parts.cache_clear()
        _static.cache_clear()


def local_time(value):
    """``HH:MM`` in the current time zone (Django's ``time_format(value, "H:i")``, a sixth of its cost)."""
    return timezone.localtime(value).strftime("%H:%M") if value else ""


def csrf_field(request):
    """Context processor: the CSRF hidden input, made once per page (each one costs 64 random draws)."""
    return {"csrf_field": csrf_input(request)}


def environment(**options):
    env = Environment(**options)
    env.globals.update(static=_static, url=url)
    env.filters.update(capfirst=capfirst, linebreaks=_linebreaks, local_time=local_time)
    return env
