"""The RLAIF workbench: Django project and core domain app.

Kept free of imports so that the plain-Python cores in this package (statistics,
importers' parsers, model zoo) can be imported without Django or Celery.
"""
