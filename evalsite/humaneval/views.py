"""Annotator pages."""


def home_context(request):
    """Context the home page shows an annotator (their open rounds)."""
    return {}
