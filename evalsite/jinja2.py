"""The Jinja2 environment for the few pages rendered on every request an annotator makes.

Most pages are Django templates. The item page is shown once per item to every annotator;
Django's template engine spent a third of that request's CPU rendering it, and Jinja2, which
compiles templates to Python, renders the same page about three times faster. Templates live in
``jinja2/``; ``jinja2/base.html`` carries the same site header as ``templates/base.html`` (a
test compares the two).
"""
from functools import lru_cache

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.template.backends.utils import csrf_input
from django.templatetags.static import static
from django.template.defaultfilters import linebreaks_filter
from django.urls import get_script_prefix, get_urlconf, reverse
from django.utils import timezone
from django.utils.dateformat import time_format
from django.utils.text import capfirst
from jinja2 import Environment


def url(name, *args, **kwargs):
    if args or kwargs:
        return reverse(name, args=args or None, kwargs=kwargs or None)
    return _fixed_url(name, get_script_prefix(), get_urlconf())


@lru_cache(maxsize=256)
def _fixed_url(name, prefix, urlconf):
    # URLs without arguments (the header's links) are the same on every page of a deployment.
    return reverse(name, urlconf=urlconf)


@receiver(setting_changed)
def _forget_urls(setting, **kwargs):
    if setting == "ROOT_URLCONF":  # tests that swap URL confs
        _fixed_url.cache_clear()


def local_time(value, fmt="H:i"):
    return time_format(timezone.localtime(value), fmt) if value else ""


def csrf_field(request):
    """Context processor: the CSRF hidden input, made once per page (each one costs 64 random draws)."""
    return {"csrf_field": csrf_input(request)}


def environment(**options):
    env = Environment(**options)
    env.globals.update(static=static, url=url)
    env.filters.update(
        capfirst=capfirst,
        linebreaks=lambda text: linebreaks_filter(text, autoescape=True),
        local_time=local_time,
    )
    return env
