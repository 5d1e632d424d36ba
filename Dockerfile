# One image for the API, the workers and the migration job. The build context holds only what
# is copied below (.dockerignore).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /srv

COPY requirements.txt constraints.txt ./
RUN pip install -r requirements.txt -c constraints.txt

COPY alembic.ini ./
COPY alembic ./alembic
COPY jobs ./jobs
COPY app ./app
COPY worker ./worker
COPY models ./models
COPY engine ./engine

RUN useradd --create-home --uid 1000 jobs && mkdir -p /data /artifacts && chown jobs /data /artifacts
# By number: a runtime that checks for a non-root user cannot resolve a name.
USER 1000:1000
ENV DATA_DIR=/data ARTIFACT_DIR=/artifacts VAR_DIR=/tmp/var

EXPOSE 8000
CMD ["python", "-m", "uvicorn", "app.main:app", "--host", "0.0.0.0", "--port", "8000"]
