"""The Celery adapter: the app, its settings, and thin tasks that call the job runner."""
