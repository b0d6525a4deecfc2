"""The import_dataset job kind and the admin upload form (thin layer over evalsite.importers)."""
from django.http import HttpResponse


def import_view(request):
    return HttpResponse("Import is being built.", status=501)
