import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")
application = get_wsgi_application()

# Import every view now (the URL conf pulls in pandas and scipy for the reports), not on each
# worker's first request: no annotator waits for it, and with gunicorn --preload the workers
# share the imported code.
from django.urls import get_resolver  # noqa: E402

get_resolver().url_patterns
