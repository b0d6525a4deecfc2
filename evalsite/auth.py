"""Django's ModelBackend, reading each request's user with one written-out statement.

Every request an authenticated user makes loads their row. The ORM spent more CPU building
that query than PostgreSQL spent answering it: on an annotator's requests it was the largest
cost outside the view. Permissions, password checks and everything else are ModelBackend's.
"""
from django.contrib.auth import backends, get_user_model
from django.core.exceptions import ValidationError
from django.db import connection

from evalsite import rawsql


class ModelBackend(backends.ModelBackend):
    def get_user(self, user_id):
        User = get_user_model()
        try:
            pk = User._meta.pk.to_python(user_id)
        except ValidationError:
            return None
        with connection.cursor() as c:
            c.execute(f"SELECT {rawsql.columns(User, 'u')} FROM {rawsql.table(User)} u "
                      f"WHERE u.{rawsql.qn(User._meta.pk.column)} = %s", [pk])
            row = c.fetchone()
        if row is None:
            return None
        user = rawsql.load(User, row)
        return user if self.user_can_authenticate(user) else None
