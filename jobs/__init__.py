"""The job core: settings, the database and its tables, the job state machine, migrations and
the queue client. The API (`app/`) and the worker (`worker/`) both sit on it and never import
each other; nothing here imports FastAPI or torch."""
