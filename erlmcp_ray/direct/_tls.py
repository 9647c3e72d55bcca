"""TLS for the direct plane (optional: ``transport.tls_cert`` / ``tls_key`` / ``tls_ca``): mutual TLS
with one private CA for the cluster. Both sides present a certificate the CA signed and accept only
peers whose certificate chains to it; host names are not checked (endpoints are node addresses, and
the CA is the cluster's own). The secret's challenge still runs inside the TLS channel."""

from __future__ import annotations

import ssl

__all__ = ["client_context", "server_context"]


def _context(purpose: int, tls: dict) -> ssl.SSLContext:
    ctx = ssl.SSLContext(purpose)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls["cert"], tls["key"])
    ctx.load_verify_locations(tls["ca"])
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def server_context(tls: dict) -> ssl.SSLContext:
    """An endpoint's context (``tls``: paths ``{"cert", "key", "ca"}``); OSError/SSLError when a file
    is missing or wrong."""
    return _context(ssl.PROTOCOL_TLS_SERVER, tls)


def client_context(tls: dict) -> ssl.SSLContext:
    ctx = _context(ssl.PROTOCOL_TLS_CLIENT, tls)
    ctx.check_hostname = False  # endpoints are node addresses: the chain to the cluster CA is what is checked
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
