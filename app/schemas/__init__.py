"""Response models (pydantic v2), one module per resource: what the API answers. Every route
declares one of these; the request models are the core's (jobs.specs)."""
