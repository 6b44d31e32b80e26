"""Distributed mode: the Celery app, the worker-side task and the ``CeleryRunner``.

The only package that imports Celery; everything else reaches it through the
``StepRunner`` protocol and ``devctl worker`` / ``devctl flower``.
"""
