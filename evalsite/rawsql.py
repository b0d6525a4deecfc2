"""Model rows read and written with written-out SQL, converted as the ORM would convert them.

The annotator queue, and the user read at the start of each request, run on every request an
annotator makes, and building their queries with the ORM cost more CPU than the database spent
running them. These helpers keep the written-out SQL honest: column lists come from the model,
and values pass through each field's own conversions (JSON, datetimes on SQLite) both ways.
"""
from functools import lru_cache

from django.db import connection


def qn(name):
    return connection.ops.quote_name(name)


def table(model):
    return qn(model._meta.db_table)


def columns(model, alias):
    """``alias."id", alias."round_id", ...``: every concrete column of ``model``, in field order."""
    return _columns(model, alias, connection.vendor)


@lru_cache(maxsize=None)
def _columns(model, alias, vendor):
    return ", ".join(f"{alias}.{qn(f.column)}" for f in model._meta.concrete_fields)


def width(model):
    return len(model._meta.concrete_fields)


@lru_cache(maxsize=None)
def _converters(model, vendor):
    out = []
    for f in model._meta.concrete_fields:
        col = f.get_col(model._meta.db_table)
        fns = connection.ops.get_db_converters(col) + col.get_db_converters(connection)
        out.append((col, fns))
    return out


def load(model, values):
    """A ``model`` instance from one row of ``columns(model, ...)`` values, as if the ORM had read it."""
    converted = []
    for value, (col, fns) in zip(values, _converters(model, connection.vendor)):
        for fn in fns:
            value = fn(value, col, connection)
        converted.append(value)
    return model.from_db(connection.alias, [f.attname for f in model._meta.concrete_fields], converted)


def load_row(row, *models):
    """One instance per model from a row of ``columns(model, ...)`` lists side by side, in that order.

    Columns after the last model's are left to the caller.
    """
    out, start = [], 0
    for model in models:
        out.append(load(model, row[start:start + width(model)]))
        start += width(model)
    return out


def insert_rows(model, rows):
    """INSERT ``rows`` (dicts of field attname -> value) in one statement; returns their ids."""
    sql, params = insert_sql(model, rows)
    with connection.cursor() as c:
        c.execute(sql + f" RETURNING {qn(model._meta.pk.column)}", params)
        return [row[0] for row in c.fetchall()]


def insert_sql(model, rows, where=None):
    """``INSERT INTO table (cols) VALUES (...), (...)`` and its parameters, for ``rows`` as above.

    ``where``: the one row is inserted only if this SQL condition holds
    (``INSERT ... SELECT ... WHERE``); its parameters follow.
    """
    fields, head = _insert_head(model, tuple(rows[0]), connection.vendor)
    one_row = "(" + ", ".join(["%s"] * len(fields)) + ")"
    params = [f.get_db_prep_save(row[f.attname], connection) for row in rows for f in fields]
    if where is not None:
        assert len(rows) == 1, "a conditional INSERT writes one row"
        return head + f"SELECT {one_row[1:-1]} WHERE {where}", params
    sql = head + f"VALUES {', '.join([one_row] * len(rows))}"
    return sql, params


def insert_each_sql(model, rows, source, values):
    """``INSERT INTO table (cols) SELECT ... FROM source CROSS JOIN (VALUES ...)``: ``rows`` once
    for each row of ``source`` (a WITH query of the same statement), so none when it is empty.

    ``values`` maps attnames to SQL over ``source`` (``{"ranking_id": "new_ranking.id"}``). The
    other values are cast to their columns' types: a column that is NULL in every row has no
    type of its own in a VALUES list.
    """
    fields, head = _insert_head(model, tuple(rows[0]), connection.vendor)
    own = [f for f in fields if f.attname not in values]
    one_row = "(" + ", ".join(f"CAST(%s AS {f.db_type(connection)})" for f in own) + ")"
    names = {f.attname: f"v{i}" for i, f in enumerate(own)}
    select = ", ".join(values[f.attname] if f.attname in values else f"v.{names[f.attname]}" for f in fields)
    sql = (head + f"SELECT {select} FROM {source} CROSS JOIN (VALUES {', '.join([one_row] * len(rows))}) "
           f"AS v({', '.join(names.values())})")
    return sql, [f.get_db_prep_save(row[f.attname], connection) for row in rows for f in own]


@lru_cache(maxsize=None)
def _insert_head(model, attnames, vendor):
    fields = [next(f for f in model._meta.concrete_fields if f.attname == name) for name in attnames]
    return fields, f"INSERT INTO {table(model)} ({', '.join(qn(f.column) for f in fields)}) "


def analyze(*models):
    """Refresh PostgreSQL's planner statistics for these models' tables (nothing elsewhere).

    Besides the statistics, this makes every session plan its prepared statements on these
    tables again, with the tables' present sizes.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as c:
            c.execute("ANALYZE " + ", ".join(table(m) for m in models))
