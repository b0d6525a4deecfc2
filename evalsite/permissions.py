"""Who may open the researcher pages: Django's model permissions, the ones the admin checks.

Being staff only lets someone log into the admin. What they may see and start, there and on the
researcher pages outside it (reports, experiments, training, the job feeds), comes from their
permissions; the "researcher" group (migration 0010) holds the ones these pages need.
"""
from django.contrib.auth.decorators import login_required, permission_required


def permissions_required(*perms):
    """Anonymous users go to the login page; a logged-in user without every one of ``perms`` gets 403.

    The view keeps the list as ``required_permissions``, so a test can check every URL has one.
    """
    def decorator(view):
        checked = login_required(permission_required(perms, raise_exception=True)(view))
        checked.required_permissions = perms
        return checked
    return decorator
