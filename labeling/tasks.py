"""Celery tasks and job kinds of this app (see evalsite.jobs)."""
