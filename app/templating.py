"""The dashboard's HTML: the Jinja2 environment (autoescaped), its number formats, and the
headers every page carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from jobs.settings import get_settings

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
STATIC_DIR = Path(__file__).resolve().parent / "static"

# Everything the pages load comes from this server: no CDN, no inline script, no framing.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def percent(fraction: float | None) -> str:
    """0.7055 -> "70.55 %" (accuracies are stored as fractions)."""
    return "–" if fraction is None else f"{fraction * 100:.2f} %"


def millions(count: int | None) -> str:
    """Parameters as the course report prints them: 11050212 -> "11.05 M"."""
    return "–" if count is None else f"{count / 1e6:.2f} M"


def gmacs(macs: int | None) -> str:
    """MACs as the course report prints them: 551979108 -> "0.55 GMac"."""
    return "–" if macs is None else f"{macs / 1e9:.2f} GMac"


def decimal(value: float | None, places: int = 4) -> str:
    return "–" if value is None else f"{value:.{places}f}"


def compact(value: Any) -> str:
    """A hyperparameter as a person writes it: 0.030000000000000002 -> "0.03", 1e-07 as is."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def objective(value: float | None, metric: str) -> str:
    """An objective value as the tables show that metric: accuracies in percent."""
    return percent(value) if metric.endswith("accuracy") else decimal(value)


def points(value: float | None, metric: str) -> str:
    """A noise margin: percentage points for an accuracy."""
    if value is None:
        return "–"
    return f"±{value * 100:.2f} pp" if metric.endswith("accuracy") else f"±{value:.4f}"


def _environment() -> Environment:
    # autoescape=True for every template: every value, a job's name included, is HTML-escaped.
    environment = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR), autoescape=True, undefined=StrictUndefined
    )
    environment.filters.update(
        percent=percent,
        millions=millions,
        gmacs=gmacs,
        decimal=decimal,
        compact=compact,
        objective=objective,
        points=points,
    )
    return environment


templates = Jinja2Templates(env=_environment())


def page(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """Render a dashboard page with the security headers."""
    response = templates.TemplateResponse(
        request,
        template,
        {"api_key_required": get_settings().api_key is not None, **context},
        status_code=status_code,
        headers=PAGE_HEADERS,
    )
    return response
