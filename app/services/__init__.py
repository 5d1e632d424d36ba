"""Services: the job operations, each taking a SQLAlchemy session keyword-only."""
