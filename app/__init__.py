"""The FastAPI adapter: routes, schemas, database access and services for training jobs."""
