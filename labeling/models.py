"""Django models of this app (thin layer over its plain-Python cores)."""
from django.db import models  # noqa: F401
