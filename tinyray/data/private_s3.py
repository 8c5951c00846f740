"""What keeps the embedded S3 endpoint private: every request signed (AWS Signature Version 4,
in the Authorization header) with its keys, and no cross-origin access.

moto's server on its own takes unsigned requests and answers CORS for any origin, PUT and DELETE
included: while it runs, any web page the user opens could read, plant or delete objects (an
export among them). A browser cannot send an Authorization header to another origin without a
CORS preflight, and every preflight is refused here; a signature in the query string (a presigned
URL, which a page could put in a plain link or form) is refused too.

``verify`` is pure (a WSGI environ in, a reason or None out) and is the standard algorithm from
AWS's SigV4 documentation; ``PrivateEndpoint`` wraps moto's WSGI app with it.
"""
from __future__ import annotations

import hashlib
import hmac
import re
from urllib.parse import quote, unquote

_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^/,\s]+)/(\d{8})/([^/,\s]+)/([^/,\s]+)/aws4_request,\s*"
                   r"SignedHeaders=([a-z0-9;._-]+),\s*Signature=([0-9a-f]{64})$")


def _header(environ: dict, name: str) -> str | None:
    key = name.upper().replace("-", "_")
    if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
        return environ.get(key)
    return environ.get("HTTP_" + key)


def _canonical_query(raw: str) -> str:
    pairs = []
    for part in raw.split("&") if raw else []:
        name, _, value = part.partition("=")
        pairs.append((quote(unquote(name), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def verify(environ: dict, access_key: str, secret_key: str) -> tuple[str, str] | None:
    """None when the request is signed with ``access_key``/``secret_key``; else (S3's error
    code for it, why), so that clients report it as they would AWS's answer."""
    raw_query = environ.get("QUERY_STRING", "")
    if "X-Amz-Signature=" in raw_query or "Signature=" in raw_query:
        return "AccessDenied", "a signature in the query string (presigned URL) is not accepted here"
    found = _AUTH.match(_header(environ, "authorization") or "")
    if not found:
        return "AccessDenied", "the request is not signed (AWS Signature Version 4)"
    key, day, region, service, signed, signature = found.groups()
    if key != access_key:
        return "InvalidAccessKeyId", "the request is signed with another access key"
    amz_date = _header(environ, "x-amz-date") or ""
    payload = _header(environ, "x-amz-content-sha256")
    if not amz_date.startswith(day) or payload is None:
        return "AccessDenied", "the signature's date or payload hash header is missing"
    names = signed.split(";")
    values = []
    for name in names:
        value = _header(environ, name)
        if value is None:
            return "AccessDenied", f"signed header {name} is missing"
        values.append(f"{name}:{' '.join(value.strip().split())}\n")
    # the path as the client sent it (S3 signs it as sent: no normalising, no double encoding)
    path = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(environ.get("PATH_INFO", "/"))
    path = path.split("?", 1)[0] or "/"
    canonical = "\n".join([environ.get("REQUEST_METHOD", "GET"), path, _canonical_query(raw_query),
                           "".join(values), signed, payload])
    scope = f"{day}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    k = ("AWS4" + secret_key).encode()
    for part in (day, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
    return None if hmac.compare_digest(expected, signature) else ("SignatureDoesNotMatch", "the signature does not match")


class PrivateEndpoint:
    """WSGI middleware: a request that is a CORS preflight, or is not signed with the keys, gets
    403 with the reason; every response loses moto's Access-Control-* headers."""

    def __init__(self, app, access_key: str, secret_key: str):
        self.app, self.access_key, self.secret_key = app, access_key, secret_key
        self.refused = 0

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "OPTIONS":
            refused = ("AccessDenied", "cross-origin requests are not served (no CORS)")
        else:
            refused = verify(environ, self.access_key, self.secret_key)
        if refused:
            self.refused += 1
            code, reason = refused
            body = (f"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>"
                    f"<Message>tinyray's embedded store: {reason}</Message></Error>").encode()
            start_response("403 Forbidden", [("Content-Type", "application/xml"),
                                             ("Content-Length", str(len(body)))])
            return [body]

        def no_cors(status, headers, exc_info=None):
            kept = [(k, v) for k, v in headers if not k.lower().startswith("access-control-")]
            return start_response(status, kept, exc_info) if exc_info else start_response(status, kept)

        return self.app(environ, no_cors)
