"""Jobs: the one mechanism for all background work (models, runtime, admin, pages).

Layers, lowest first: :mod:`.models` (the rows) → :mod:`.runtime` (kinds, submit, execute,
fan-out) → each app's job kinds → experiment orchestration → the queue adapter
(:mod:`evalsite.celery`) → views. ``.importlinter`` holds the contracts CI checks.
"""
