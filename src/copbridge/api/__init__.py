"""The HTTP face of copbridge: FastAPI app factory, routes, dependencies, middleware."""
