"""Keep secrets out of every line synctool prints or writes.

Every secret value (a password in a URL, a secret key, an inline private key)
is registered here as soon as the options are parsed; :func:`redact` then
replaces it with ``***`` in any text. Every record of the ``synctool``
loggers (whichever handler takes it: ours, or a library caller's), the
progress display, error messages and the report all pass through it, so a
secret that slips into an exception message from a library is still masked.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

MASK = "***"

_lock = threading.Lock()
#: Option keys whose values are secrets, whichever backend they are given
#: to: the ``secret`` flags of every backend's option table, added as each
#: backend class is defined (see ``Backend.__init_subclass__``).
_secret_keys: set[str] = set()
_secrets: set[str] = set()
_pattern: re.Pattern[str] | None = None
# A password in a URL: scheme://user:PASSWORD@host
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^/@:\s]*:)(?P<pw>[^@/\s]+)(?=@)")


def register(value: str | None) -> None:
    """Mask ``value`` from now on (and its URL-encoded form)."""
    global _pattern
    if not value or len(value) < 3:
        # Masking one- or two-character strings would shred ordinary text;
        # such a secret is no secret anyway.
        return
    with _lock:
        for form in {value, quote(value, safe=""), quote(value), quote_plus(value)}:
            _secrets.add(form)
            # Inline keys span lines; mask each long line of them too.
            for line in form.splitlines():
                if len(line.strip()) >= 16:
                    _secrets.add(line.strip())
        ordered = sorted(_secrets, key=len, reverse=True)
        _pattern = re.compile("|".join(re.escape(s) for s in ordered))


def add_secret_keys(keys: Iterable[str]) -> None:
    with _lock:
        _secret_keys.update(key.lower() for key in keys)


def is_secret_key(key: str) -> bool:
    """Whether a backend that is loaded flags ``key`` as a secret."""
    return key.lower() in _secret_keys


def register_options(options: Mapping[str, str]) -> None:
    """Mask the values of every secret key in ``options``."""
    for key, value in options.items():
        if is_secret_key(key):
            register(value)


def redact(text: object) -> str:
    """``text`` with every registered secret and every URL password masked."""
    out = _URL_PASSWORD.sub(lambda m: m.group("head") + MASK, str(text))
    pattern = _pattern
    if pattern is not None:
        out = pattern.sub(MASK, out)
    return out


def clear() -> None:
    """Forget all secrets (tests, and library calls that run many syncs)."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None
