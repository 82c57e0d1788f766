"""The FastAPI application (``moa api`` serves it)."""

from __future__ import annotations

from fastapi import FastAPI

from api import errors, routes_jobs, routes_openai, routes_ops


def create_app() -> FastAPI:
    app = FastAPI(
        title="moa-batch",
        version="0.1.0",
        description="Mixture-of-Agents batch jobs and an OpenAI-compatible MoA endpoint.",
    )
    errors.install(app)
    app.include_router(routes_ops.router)
    app.include_router(routes_jobs.router)
    app.include_router(routes_openai.router)
    return app
