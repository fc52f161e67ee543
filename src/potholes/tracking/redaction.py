"""Passwords out of what is logged and printed: URLs of stores and servers with the secret masked."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"
# libpq and SQLAlchemy also take a password as a query parameter (?password=...).
_QUERY_SECRET = re.compile(r"(?i)([?&](?:password|passwd|pwd)=)[^&]*")


def mask_url(url: str | None) -> str | None:
    """``url`` with any password replaced by ``***`` (user name, host and the rest kept, the
    text otherwise untouched), so a storage URL or tracking URI can be logged or printed."""
    if not url or "://" not in url:
        return url
    netloc = urlsplit(url).netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            url = url.replace(f"//{netloc}", f"//{userinfo.split(':', 1)[0]}:{MASK}@{host}", 1)
    return _QUERY_SECRET.sub(lambda m: m.group(1) + MASK, url)
