"""The signing key's passphrase from the environment, apart from keys.py so that reading it loads no crypto library."""

from __future__ import annotations

import os
from collections.abc import Mapping

PASSWORD_ENV = "XRUN_KEY_PASSWORD"


def key_password(environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The passphrase from XRUN_KEY_PASSWORD (UTF-8); unset or empty means an unencrypted key."""
    value = environ.get(PASSWORD_ENV)
    return value.encode("utf-8") if value else None
