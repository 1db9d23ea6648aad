"""The herbid web app: an HTML page and a JSON API over one bundle (and optional index).

Routes (``/api/*`` need ``Authorization: Bearer TOKEN`` when the app has a token, except
``/api/health`` so that load balancers and the page itself can probe it):

* ``GET /`` — the page (static HTML + vanilla JS, no external assets);
* ``GET /api/health`` — status, model id, species count, index size, limits (``limits``:
  upload bytes and pixels, concurrent decodes, the decode memory bound);
* ``GET /api/model`` — the bundle's species, taxonomy, preprocessing and thresholds;
* ``POST /api/identify`` — multipart ``file`` → top-k species, genus, family, suggestion
  (``similar=K`` adds the K most similar indexed sheets from the same forward pass);
* ``POST /api/similar`` — multipart ``file`` → the ``k`` most similar indexed sheets;
* ``GET /api/specimens/{image_id}/thumbnail`` — an indexed sheet's stored 256 px copy;
* ``GET /docs`` and ``/openapi.json`` — FastAPI's API docs (Swagger UI loads its script
  from a CDN, so ``/docs`` needs a browser with internet; ``/openapi.json`` is local).

Why it is built this way: uploads are read by :mod:`herbid.web.uploads` (size-capped,
in memory, never on disk); decoding and inference are blocking and CPU-heavy, so they
run in worker threads behind a capacity limiter and the event loop keeps answering; a
bad image is the client's problem, answered with a 4xx and a one-line reason.

A small file can still decode huge (a 190 KB 16-bit PNG is 9400×9400), so an upload's
pixels are checked from its header against ``max_upload_pixels`` before decoding (413
beyond it), big images are shrunk before any mode conversion, and at most
``concurrent_decodes`` decodes run at once: peak decode memory is bounded and stated in
``/api/health``. Only requests whose ``Host`` names this server are answered (400
otherwise), so a web page cannot reach a loopback server through DNS rebinding.
"""

from __future__ import annotations

import ipaddress
import logging
import mimetypes
import secrets
import threading
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

import anyio
import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.middleware.trustedhost import TrustedHostMiddleware

import herbid
from herbid.data.imaging import DECODE_BYTES_PER_PIXEL, DEFAULT_MAX_PIXELS, ImageRejected, ImageTooLarge
from herbid.errors import InvalidOption
from herbid.web.uploads import UploadError, read_upload

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_MAX_UPLOAD_BYTES = 20 * MiB
#: Pixels an upload may need decoded (header size; a baseline JPEG's reduced-scale size):
#: 40 MP covers phone photos and sheet scans up to ~6300×6300; bigger baseline JPEGs pass
#: because libjpeg decodes them at 1/8 scale.
DEFAULT_MAX_UPLOAD_PIXELS = 40_000_000
#: Full-resolution decodes at once, whatever the number of inference threads: this, not
#: the thread count, is what multiplies the per-decode memory bound.
DEFAULT_CONCURRENT_DECODES = 2
#: Concurrent decode + inference jobs; torch already spreads one job over the cores.
DEFAULT_INFERENCE_THREADS = 2
#: Host header values always answered: this machine's own names for itself.
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
STATIC_DIR = Path(__file__).with_name("static")
NO_INDEX = "no specimen index is loaded: start the server with --index INDEX to search similar specimens"
#: What a thumbnail may be; anything else in an index's metadata is not served.
THUMBNAIL_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
#: Image ids are hex digests; anything else cannot be in the index and is refused early.
IMAGE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
#: The page: scripts, styles and images from this server only (blob: for local previews).
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")

T = TypeVar("T")


class NoIndexError(LookupError):
    """A similar-specimen request to a server started without an index (answered 409)."""

UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "a herbarium sheet image (JPEG, PNG, TIFF, …)"}},
        }}},
    }
}
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or wrong bearer token"},
    400: {"description": "empty file, no 'file' field, malformed multipart body, or a Host this server does not answer"},
    413: {"description": "upload larger than the server's byte limit or pixel limit (max_upload_pixels)"},
    415: {"description": "not an image, or not multipart/form-data"},
    422: {"description": "truncated or corrupt image, decompression bomb, or invalid query"},
}


# --------------------------------------------------------------------------- service


class DecodeGate:
    """At most ``concurrent`` upload decodes at once, each of at most ``max_pixels`` decoded pixels.

    A threading semaphore, not the anyio limiter: decodes run in worker threads, and the
    bound must hold however many inference threads the app was given.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS, concurrent: int = DEFAULT_CONCURRENT_DECODES,
                 max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES) -> None:
        if max_pixels < 1 or concurrent < 1:
            raise InvalidOption("max_upload_pixels and concurrent_decodes must be positive")
        self.max_pixels = max_pixels
        self.concurrent = concurrent
        self.max_upload_bytes = max_upload_bytes
        self._slots = threading.BoundedSemaphore(concurrent)

    @property
    def memory_bytes_per_decode(self) -> int:
        """Upper estimate of what one decode holds: the worst measured bytes per decoded
        pixel (a palette PNG with transparency) times the cap, plus the upload's bytes."""
        return DECODE_BYTES_PER_PIXEL * self.max_pixels + self.max_upload_bytes

    def sheet_tensor(self, identifier: Any, data: bytes) -> torch.Tensor:
        with self._slots:
            return identifier.sheet_tensor(data, max_decoded_pixels=self.max_pixels)

    def limits(self) -> dict[str, int]:
        per_decode = self.memory_bytes_per_decode
        return {"max_upload_bytes": self.max_upload_bytes, "max_upload_pixels": self.max_pixels,
                "concurrent_decodes": self.concurrent, "decode_memory_bytes_per_request": per_decode,
                "decode_memory_bytes_total": per_decode * self.concurrent}


class Service:
    """The loaded model and optional specimen index. Every method blocks: call from a thread.

    One :class:`~herbid.identification.predict.Identifier` is shared by all requests
    (it is safe for concurrent inference), and one pass through the backbone gives both
    the species probabilities and the search embedding.
    """

    def __init__(self, identifier: Any, index: Any | None = None) -> None:
        self.identifier = identifier
        self.index = index
        self.thumbnails = _thumbnail_paths(index) if index is not None else {}

    @classmethod
    def load(cls, bundle_path: str | Path, index_path: str | Path | None = None, *, device: str = "auto",
             max_pixels: int = DEFAULT_MAX_PIXELS) -> "Service":
        """Load the bundle (and index) once, refusing an index built with another model."""
        from herbid.identification.index import SpecimenIndex
        from herbid.identification.predict import Identifier

        identifier = Identifier(bundle_path, device=device, max_pixels=max_pixels)
        index = None
        if index_path is not None:
            index = SpecimenIndex.load(index_path)
            index.check_compatible(identifier.bundle)
        return cls(identifier, index)

    @property
    def index_size(self) -> int | None:
        return len(self.index) if self.index is not None else None

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "model_id": self.identifier.model_id, "species": len(self.identifier.species),
                "index_size": self.index_size, "version": herbid.__version__}

    def analyse(self, data: bytes, *, top_k: int = 5, similar: int = 0, gate: DecodeGate | None = None
                ) -> dict[str, Any]:
        """Identification (and ``similar`` neighbours) from one decode and one forward pass.

        Raises ``ImageRejected`` for bytes that are not a usable image (``ImageTooLarge``
        beyond the ``gate``'s pixel cap, which also bounds how many decodes run at once).
        """
        from herbid.identification.index import encode_tensors

        tensor = (gate.sheet_tensor(self.identifier, data) if gate is not None
                  else self.identifier.sheet_tensor(data)).unsqueeze(0)
        encoded = encode_tensors(self.identifier.bundle, [tensor], self.identifier.device)
        logits = torch.from_numpy(encoded.logits) / self.identifier.temperature
        result = self.identifier.from_probabilities(logits.softmax(dim=1), top_k)[0].to_dict()
        if similar > 0:
            result["similar"] = self.neighbours(encoded.embeddings, similar)
        return result

    def neighbours(self, embeddings: Any, k: int) -> list[dict[str, Any]]:
        if self.index is None:
            raise NoIndexError(NO_INDEX)
        return [_public_neighbour(row) for row in self.index.neighbours(embeddings, k)[0]]

    def thumbnail_path(self, image_id: str) -> Path | None:
        """The stored sheet of an indexed image id; ``None`` for any id not in the index."""
        found = self.thumbnails.get(image_id)
        return Path(found) if found else None


def _thumbnail_paths(index: Any) -> dict[str, str]:
    """image_id → stored 256 px copy, from the index metadata only (never from a request)."""
    meta = index.metadata
    return {str(image_id): str(path) for image_id, path in zip(meta["image_id"], meta["image_path"])
            if isinstance(path, str) and path and Path(path).suffix.lower() in THUMBNAIL_SUFFIXES}


#: Server-side paths stay on the server: the client gets a thumbnail URL instead.
PRIVATE_NEIGHBOUR_FIELDS = frozenset({"image_path", "large_image_path", "source_path", "dataset", "index_row"})


def _public_neighbour(row: dict[str, Any]) -> dict[str, Any]:
    public = {key: value for key, value in row.items() if key not in PRIVATE_NEIGHBOUR_FIELDS}
    public["thumbnail_url"] = f"/api/specimens/{row['image_id']}/thumbnail"
    return public


# ------------------------------------------------------------------------ errors


def rejection_status(reason: str) -> int:
    """HTTP status for an ``ImageRejected`` reason: 400 empty, 415 not an image, else 422."""
    lowered = reason.lower()
    if lowered.startswith("empty"):
        return 400
    if "not an image" in lowered:
        return 415
    return 422


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure becomes JSON ``{"detail": "..."}``; nothing takes the server down."""

    @app.exception_handler(UploadError)
    async def upload_error(request: Request, exc: UploadError) -> JSONResponse:
        return _error(exc.status, exc.message)

    @app.exception_handler(ImageRejected)
    async def image_rejected(request: Request, exc: ImageRejected) -> JSONResponse:
        status = 413 if isinstance(exc, ImageTooLarge) else rejection_status(str(exc))
        return _error(status, f"image rejected: {exc}")

    @app.exception_handler(NoIndexError)
    async def no_index(request: Request, exc: NoIndexError) -> JSONResponse:
        return _error(409, str(exc))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")


# -------------------------------------------------------------------------- auth


def bearer_guard(token: str | None) -> Callable[..., Any]:
    """A dependency that demands ``Authorization: Bearer <token>`` (no-op without a token)."""
    scheme = HTTPBearer(auto_error=False, description="the token given to `herbid serve --token`")

    async def require_token(credentials: HTTPAuthorizationCredentials | None = Depends(scheme)) -> None:
        if token is None:
            return
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, token.encode()):
            raise HTTPException(401, "missing or wrong token: send the header 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})

    return require_token


# ------------------------------------------------------------------------- app


async def run_blocking(app: FastAPI, func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run CPU-bound work in a worker thread, at most ``inference_threads`` at a time."""
    limiter = getattr(app.state, "limiter", None)
    if limiter is None:  # created lazily: a limiter belongs to the running event loop
        limiter = app.state.limiter = anyio.CapacityLimiter(app.state.inference_threads)
    return await anyio.to_thread.run_sync(partial(func, *args, **kwargs), limiter=limiter)


def host_pattern(host: str) -> str:
    """``host`` as a Host header names it (lower case, IPv6 in brackets); ``*`` and
    ``*.example.org`` are wildcards. Raises ``InvalidOption`` for anything else."""
    name = host.strip().lower()
    if ":" in name and not name.startswith("["):
        try:
            name = f"[{ipaddress.IPv6Address(name)}]"
        except ValueError:
            raise InvalidOption(f"allowed host {host!r}: give a host name without a port") from None
    if not name or "/" in name or "*" in name[1:] or (name.startswith("*") and name not in {"*"}
                                                      and not name.startswith("*.")):
        raise InvalidOption(f"allowed host {host!r}: expected a name, an IP address, '*.example.org' or '*'")
    return name


def answered_hosts(allowed_hosts: Sequence[str] | None) -> list[str]:
    """The loopback names plus ``allowed_hosts``, normalised, without repeats."""
    return list(dict.fromkeys(host_pattern(host) for host in (*LOOPBACK_HOSTS, *(allowed_hosts or ()))))


def create_app(bundle_path: str | Path | None = None, index_path: str | Path | None = None, *,
               token: str | None = None, max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS, device: str = "auto",
               inference_threads: int = DEFAULT_INFERENCE_THREADS, service: Service | None = None,
               max_upload_pixels: int = DEFAULT_MAX_UPLOAD_PIXELS,
               concurrent_decodes: int = DEFAULT_CONCURRENT_DECODES,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """The FastAPI app for a bundle (or run folder) and an optional specimen index.

    The model is loaded here, not on the first request, so that a bad bundle fails at
    start-up. ``service`` replaces loading (tests that share one loaded model).
    ``allowed_hosts``: Host header names answered besides ``localhost``, ``127.0.0.1``
    and ``[::1]`` (``"*"`` answers any); every other Host gets 400, which stops DNS
    rebinding (a page on evil.example whose name now resolves to 127.0.0.1).
    """
    if token is not None and not token:
        raise ValueError("the token must not be empty")
    if max_upload_bytes < 1:
        raise ValueError("max_upload_bytes must be positive")
    gate = DecodeGate(max_upload_pixels, concurrent_decodes, max_upload_bytes)
    hosts = answered_hosts(allowed_hosts)
    if service is None:
        if bundle_path is None:
            raise ValueError("create_app needs a bundle path (or a loaded service)")
        service = Service.load(bundle_path, index_path, device=device, max_pixels=max_pixels)
    app = FastAPI(title="herbid", version=herbid.__version__, redoc_url=None,
                  description="Identify plant species from herbarium sheet images. " + _auth_note(token))
    app.state.service = service
    app.state.inference_threads = max(1, inference_threads)
    app.state.allowed_hosts = hosts
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    install_error_handlers(app)
    add_page_routes(app)
    add_api_routes(app, service, token=token, gate=gate)
    return app


def _auth_note(token: str | None) -> str:
    return ("Every /api route except /api/health needs `Authorization: Bearer <token>`." if token
            else "No authentication (the server was started without a token).")


def add_page_routes(app: FastAPI) -> None:
    """``/`` (the page, with a strict Content-Security-Policy) and ``/static``."""
    page = (STATIC_DIR / "index.html").read_text(encoding="utf-8")

    @app.get("/", include_in_schema=False)
    async def index_page() -> HTMLResponse:
        return HTMLResponse(page, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache",
                                           "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def add_api_routes(app: FastAPI, service: Service, *, token: str | None, gate: DecodeGate) -> None:
    guard = [Depends(bearer_guard(token))]
    max_upload_bytes = gate.max_upload_bytes

    @app.get("/api/health", tags=["service"])
    async def health() -> dict[str, Any]:
        """Liveness, what is loaded and the upload limits; never needs the token (it reveals no data)."""
        return {**service.health(), "auth": token is not None, "max_upload_bytes": max_upload_bytes,
                "limits": gate.limits()}

    @app.get("/api/model", tags=["service"], dependencies=guard, responses={401: ERROR_RESPONSES[401]})
    async def model_info() -> dict[str, Any]:
        """The bundle's species list, taxonomy, preprocessing and uncertainty thresholds."""
        return service.identifier.info()

    @app.post("/api/identify", tags=["identify"], dependencies=guard, openapi_extra=UPLOAD_BODY,
              responses={**ERROR_RESPONSES, 409: {"description": "similar > 0 but no index is loaded"}})
    async def identify(request: Request, top_k: int = Query(5, ge=1, le=100),
                       similar: int = Query(0, ge=0, le=100, description="also return this many similar sheets")
                       ) -> dict[str, Any]:
        """Top-k species with calibrated probabilities, best genus and family, suggestion."""
        if similar and service.index is None:
            raise NoIndexError(NO_INDEX)
        upload = await read_upload(request, limit=max_upload_bytes)
        return await run_blocking(app, service.analyse, upload.data, top_k=top_k, similar=similar, gate=gate)

    @app.post("/api/similar", tags=["identify"], dependencies=guard, openapi_extra=UPLOAD_BODY,
              responses={**ERROR_RESPONSES, 409: {"description": "no specimen index is loaded"}})
    async def similar_specimens(request: Request, k: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
        """The ``k`` indexed sheets most similar to the upload, with their catalogue data."""
        if service.index is None:
            raise NoIndexError(NO_INDEX)
        upload = await read_upload(request, limit=max_upload_bytes)
        result = await run_blocking(app, service.analyse, upload.data, top_k=1, similar=k, gate=gate)
        return {"neighbours": result["similar"], "model_id": result["model_id"]}

    @app.get("/api/specimens/{image_id}/thumbnail", tags=["specimens"], dependencies=guard,
             response_class=FileResponse, responses={404: {"description": "no such image id in the index"}})
    async def thumbnail(image_id: str = PathParam(pattern=IMAGE_ID_PATTERN)) -> FileResponse:
        """The stored 256 px copy of an indexed sheet, found by its id in the index metadata."""
        path = service.thumbnail_path(image_id)
        if path is None or not path.is_file():
            raise HTTPException(404, f"no indexed specimen image with id {image_id!r}")
        media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=media_type,
                            headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"})
