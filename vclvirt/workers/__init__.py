"""The Celery app, routing, worker start-up and log binding."""
