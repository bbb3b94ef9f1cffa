"""What every LinePulse HTTP API shares: docs served from the package, one error shape.

- **Docs offline.** `/docs` (Swagger UI) and `/redoc` load their scripts and styles from
  files shipped in the `fastapi-offline` package, under `/static-offline-docs`, never from
  a CDN: plant networks are often cut off from the internet, and a blank `/docs` there
  looks like a broken API. Swagger UI's online validator badge (which calls
  validator.swagger.io) is switched off for the same reason.
- **One `/metrics` answer.** `metrics_response` serves a registry in Prometheus' text
  format without the `*_created` series: prometheus_client adds one per counter,
  histogram and summary (a creation timestamp that Prometheus stores as one more
  series per label set and nothing of LinePulse reads). The library's switch is
  process-wide, so it is set here, where every LinePulse `/metrics` answer is made.
- **One error shape.** Every error answer is `{"detail": "<one sentence>"}`
  (`linepulse.errors.ErrorDetail`): the services' named errors (any `LinePulseError`, by
  one handler here, with the status the error carries), the guard's
  (linepulse/http/guard.py), and FastAPI's request validation, whose list of problems is
  turned into one line here, so a client parses one format whatever caught the mistake.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    disable_created_metrics,
    generate_latest,
)

from linepulse.errors import ErrorDetail, LinePulseError
from linepulse.http.guard import GUARD_RESPONSES

DOCS_STATIC_URL: Final = "/static-offline-docs"

VALIDATION_RESPONSE: Final[dict[str, Any]] = {
    "model": ErrorDetail,
    "description": "a parameter or body that cannot be used; `detail` says which and why",
}


def errors_of_a_text_route() -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route whose success is not JSON (`/metrics`): FastAPI would
    document its error models under the route's media type; they are JSON all the same."""
    ref = {"$ref": "#/components/schemas/ErrorDetail"}
    return {
        status: {
            "description": response["description"],
            "content": {"application/json": {"schema": ref}},
        }
        for status, response in {**GUARD_RESPONSES, 422: VALIDATION_RESPONSE}.items()
    }


def create_api(**options: Any) -> FastAPI:
    """A FastAPI app with offline docs and the one error shape (a service's named errors
    and FastAPI's validation errors alike); `options` are FastAPI's (title, description,
    lifespan, responses, ...). Add the routes after this call: they take the 422
    documented here rather than FastAPI's list of validation errors."""
    options.setdefault("version", package_version())
    app = FastAPIOffline(
        static_url=DOCS_STATIC_URL,
        swagger_ui_parameters={"validatorUrl": None},
        **options,
    )
    app.add_exception_handler(LinePulseError, handle_error)
    app.add_exception_handler(RequestValidationError, handle_validation_error)
    app.router.responses = {**app.router.responses, 422: VALIDATION_RESPONSE}
    return app


def metrics_response(registry: CollectorRegistry) -> Response:
    """`registry` in Prometheus' text exposition format, without `*_created` series."""
    # Process-wide and idempotent (see the module docstring); the library leaves it untyped.
    disable_created_metrics()  # type: ignore[no-untyped-call]
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


async def handle_error(request: Request, exc: Exception) -> JSONResponse:
    """Answer a service's named error (any `LinePulseError`) with the status it carries
    and `{"detail": message}`: routes raise what went wrong, this says it."""
    if not isinstance(exc, LinePulseError):  # pragma: no cover - registered for it only
        raise exc
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)


async def handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    """Report FastAPI's request validation as 422 `{"detail": "..."}`, one clause per
    problem, each naming the parameter or body field (`body field 'matchers[0].name'`)."""
    if not isinstance(exc, RequestValidationError):  # pragma: no cover - registered for it
        raise exc
    problems = []
    for error in exc.errors():
        where = _where(tuple(error.get("loc", ())))
        if error.get("type") == "missing":
            problems.append(f"{where} is required; see /docs for its format")
            continue
        message = f"{where}: {error.get('msg', 'invalid')}"
        if "input" in error and error.get("type") != "json_invalid":
            message += f", got {_short(error['input'])}"
        problems.append(message)
    return JSONResponse({"detail": "; ".join(problems) or "invalid request"}, status_code=422)


def _where(loc: tuple[Any, ...]) -> str:
    """`query parameter 'window'`, `body field 'matchers[0].name'`, `the body`."""
    if not loc:
        return "the request"
    kind, path = str(loc[0]), loc[1:]
    if not path:
        return "the body" if kind == "body" else kind
    name = ""
    for part in path:
        name += f"[{part}]" if isinstance(part, int) else (f".{part}" if name else str(part))
    what = "body field" if kind == "body" else f"{kind} parameter"
    return f"{what} '{name}'"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def package_version() -> str:
    """The installed linepulse version, for the OpenAPI documents."""
    try:
        return version("linepulse")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        return "0.0.0"
