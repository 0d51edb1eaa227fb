"""Web: the FastAPI application (health and readiness now; API, worklist and admin pages later)."""
