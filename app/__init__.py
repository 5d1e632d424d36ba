"""The FastAPI adapter: routes that parse a request, make one call of the core (jobs/) and render
its answer; read schemas per resource; the session dependency; middleware; event streams; plots;
the dashboard's templates and static files."""
