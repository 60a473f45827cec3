"""The service's signing secret: configured, or generated once and kept in the data dir.

Used for links that must not be forged (one-time survey links). Several processes sharing one data
dir (or one configured secret) sign and verify the same way.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from hotline.settings import Settings


def service_secret(settings: Settings) -> bytes:
    configured = settings["server"]["secret_key"]
    if configured:
        return configured.encode()
    path = Path(settings.data_dir) / "secret_key"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: when two processes start together, exactly one writes the secret.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32))
    return path.read_bytes().strip()
