"""The OpenAPI document tells every status a route can answer: routes declare what is particular to
them (409, 413, 429...), and what follows from their shape is added here, once: 401 where a caller must
be signed in, 404 where the path names an object, 422 where there is input. A 405 lists in `Allow`
every method the path has, not only those of the first route that matched it."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from api.deps import get_admin, get_current_user, get_temporal
from api.schemas.common import ErrorBody

ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def _depends_on(dependant: Dependant, call: Any) -> bool:
    return any(d.call is call or _depends_on(d, call) for d in dependant.dependencies)


def _has_input(dependant: Dependant) -> bool:
    return bool(dependant.body_params or dependant.query_params or dependant.header_params or dependant.path_params)


def implied_statuses(route: APIRoute) -> set[int]:
    statuses: set[int] = set()
    if _depends_on(route.dependant, get_current_user):
        statuses.add(401)
    if _depends_on(route.dependant, get_admin):
        statuses.add(403)
    if _depends_on(route.dependant, get_temporal):
        statuses.add(503)  # Temporal cannot be reached
    if route.dependant.body_params:
        statuses.add(400)  # a body that is not JSON at all
    if route.dependant.path_params:
        statuses.add(404)
    if _has_input(route.dependant):
        statuses.add(422)
    return statuses


def api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every APIRoute, also those of included routers (FastAPI keeps those inside an included-router
    route of its own)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif getattr(route, "original_router", None) is not None:
            found.extend(api_routes(route.original_router.routes))
    return found


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        if "ErrorBody" not in components:
            components.update(ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"])
            components["ErrorBody"] = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
            components["ErrorBody"].pop("$defs", None)
        for route in api_routes(app.routes):
            if not route.include_in_schema:
                continue
            operations = schema["paths"].get(route.path_format, {})
            for method in route.methods or ():
                operation = operations.get(method.lower())
                if operation is None:
                    continue
                responses = operation.setdefault("responses", {})
                if "422" in responses:
                    # Every 422 has the platform's error body (FastAPI would name its own model).
                    responses["422"]["content"] = {"application/json": {"schema": ERROR_REF}}
                for status in sorted(implied_statuses(route)):
                    responses.setdefault(
                        str(status),
                        {
                            "description": HTTPStatus(status).phrase,
                            "content": {"application/json": {"schema": ERROR_REF}},
                        },
                    )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed: set[str] = set()
            for route in app.router.routes:
                match, _ = route.matches(request.scope)
                if match != Match.NONE:
                    methods: set[str] = getattr(route, "methods", None) or set()
                    allowed |= methods
            headers["Allow"] = ", ".join(sorted(allowed))
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse({"detail": exc.detail, "code": code}, status_code=exc.status_code, headers=headers)
