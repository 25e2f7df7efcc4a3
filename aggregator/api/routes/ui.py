"""``/ui``: the researchers' web dashboard, a static page bundled with the package (no CDN).

The page holds no data; it asks the token once, keeps it in session storage and reads the
researcher API with it, so the dashboard sits behind the same tokens as the API.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from aggregator.errors import NotFoundError

router = APIRouter(tags=["ui"], include_in_schema=False)

UI_DIR = Path(str(resources.files("aggregator") / "ui"))
_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}


@router.get("/ui")
def ui_root() -> RedirectResponse:
    return RedirectResponse("/ui/")


@router.get("/ui/")
def ui_index() -> FileResponse:
    """The dashboard page."""
    return _asset("index.html")


@router.get("/ui/{name}")
def ui_asset(name: str) -> FileResponse:
    """A file of the dashboard (script, style sheet), by plain name only."""
    return _asset(name)


def _asset(name: str) -> FileResponse:
    path = UI_DIR / name
    suffix = Path(name).suffix
    if "/" in name or name.startswith(".") or suffix not in _TYPES or not path.is_file():
        raise NotFoundError(f"no dashboard file {name!r}")
    return FileResponse(path, media_type=_TYPES[suffix], headers=_HEADERS)
