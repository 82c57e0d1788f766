"""Celery side of moa-batch: the app, routing, per-process resources and the thin tasks."""
