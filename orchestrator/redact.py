"""Secrets kept out of everything recorded or shown: database passwords in every form a URL or
a libpq connection string can carry them. Pure text functions; see docs/security.md.

Forms handled: `scheme://user:PASSWORD@host/...` (userinfo), `...?password=PASSWORD&...` (a query
parameter, any of the names in SECRET_KEYS), and libpq's `key=value` connection strings
(`host=db password=PASSWORD` or `password='with spaces'`).
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

MASK = "***"
# Parameter names that carry a secret (libpq's `password`/`sslpassword`, and the usual others).
SECRET_KEYS = ("password", "passwd", "pwd", "pass", "sslpassword", "secret", "token")
_KEYS = "|".join(sorted(SECRET_KEYS, key=len, reverse=True))

# userinfo: scheme://user:secret@ -- everything up to the token's last '@' (over-hiding is safe)
_USERINFO = re.compile(r"(?P<head>(?:[A-Za-z][A-Za-z0-9+.\-]*)?://[^\s:/@]*:)(?P<pw>\S*)@")
# the same within one argument of a command line, where a password may hold spaces
_USERINFO_ARG = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<pw>.*)@", re.DOTALL)
# a query parameter: ?password=secret or &password=secret (up to the next & # or whitespace)
_QUERY = re.compile(rf"(?P<head>[?&;](?:{_KEYS})=)(?P<pw>[^&#\s]*)", re.IGNORECASE)
# libpq key=value (password=secret, password = 'quoted \\' secret'), also PGPASSWORD=... and
# --password=...: at a word start, so never inside a URL
_DSN = re.compile(
    rf"(?P<head>(?:^|(?<=[\s\"',]))[\w.\-]*?(?:{_KEYS})\s*=\s*)(?P<pw>'(?:[^'\\]|\\.)*'|[^\s\"',]+)",
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """`text` with every password it holds (URL userinfo, query parameter, libpq key=value)
    replaced by ***. For command lines, messages and anything else free-form."""
    if not text:
        return text
    return _redact(text, _USERINFO)


def _redact(text: str, userinfo: re.Pattern[str]) -> str:
    text = userinfo.sub(lambda m: m.group("head") + MASK + "@", text)
    text = _QUERY.sub(lambda m: m.group("head") + MASK, text)
    return _DSN.sub(lambda m: m.group("head") + MASK, text)


def redact_argv(argv: list[str]) -> list[str]:
    """An argument vector with its passwords hidden (each argument as redact_text)."""
    return [_redact(arg, _USERINFO_ARG) if arg else arg for arg in argv]


def without_password(url: str) -> str:
    """The URL with no password at all (userinfo and query parameters dropped), for what is
    stored and handed on: whoever connects brings the password from $PGPASSWORD, ~/.pgpass or
    $PGPASSFILE. A libpq key=value string loses its password=... pairs."""
    if "://" not in url:
        return re.sub(r"\s+", " ", _DSN.sub("", url)).strip()
    parts = urlsplit(url)
    if "@" not in parts.netloc and not _QUERY.search(url):
        return url  # nothing to drop (and sqlite:////abs/path stays as written)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        netloc = f"{userinfo.split(':', 1)[0]}@{host}"
    kept = [
        (k, v)
        for k, v in parse_qsl(parts.query, keep_blank_values=True)
        if k.lower() not in SECRET_KEYS
    ]
    query = urlencode(kept, quote_via=quote, safe="/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
