"""The herbid web app: an upload page and a JSON API for identification and similar sheets.

``herbid serve BUNDLE [--index INDEX]`` runs it (see :mod:`herbid.web.server` for the
bind and token rules); :func:`create_app` builds the FastAPI app for embedding or tests.
"""

from herbid.web.app import DEFAULT_MAX_UPLOAD_BYTES, Service, create_app
from herbid.web.server import UnsafeBindError, check_bind, is_loopback, running_server, serve

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "Service", "UnsafeBindError", "check_bind", "create_app", "is_loopback",
           "running_server", "serve"]
