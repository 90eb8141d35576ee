"""Is a model id usable on this machine? Answered in about a second, before any loading starts.

A model id that is not a local directory is a Hugging Face hub id. Offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE
set, or no route to the hub endpoint) and not in the local hub cache, transformers would retry the download for
about 50 s per run before failing; `check_model_available` says so at once, with the fix. Cached ids and local
paths pass untouched (transformers reads the cache offline). No torch, no transformers import.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

__all__ = ["ModelUnavailableError", "check_model_available", "looks_like_hub_id", "hub_offline_reason"]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
"""'name' or 'org/name' (the hub's repo id shape); anything else (a path with more parts, ~, ./) is local."""
_TRUE = {"1", "true", "yes", "on"}
CONNECT_TIMEOUT_S = 2.0
"""How long the reachability probe of the hub endpoint may take (a TCP connect, no request)."""


class ModelUnavailableError(ValueError):
    """A model id is neither a local directory nor reachable: the message names the id and the fix."""


def looks_like_hub_id(model_id: str) -> bool:
    """True for 'org/name' or 'name' that is not an existing local path."""
    s = str(model_id)
    return not Path(s).expanduser().exists() and bool(_HUB_ID.match(s))


def _cached(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    try:
        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # noqa: BLE001 - an id the cache cannot parse is simply not cached
        return False


def _reachable(host: str, port: int, timeout_s: float) -> bool:
    """A TCP connect within `timeout_s`, run in a thread so a slow DNS lookup cannot hold the caller longer."""
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                ok.append(True)
        except OSError:
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout_s + 0.5)
    return bool(ok and ok[0])


def hub_offline_reason(*, timeout_s: float = CONNECT_TIMEOUT_S) -> str | None:
    """Why the hub cannot be reached (an env switch or no route), or None when it can."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var}={os.environ[var]} is set"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    u = urlparse(endpoint)
    host, port = u.hostname or "huggingface.co", u.port or (80 if u.scheme == "http" else 443)
    if not _reachable(host, port, timeout_s):
        return f"{host}:{port} is unreachable (no network within {timeout_s:g} s)"
    return None


def check_model_available(model_id: str | None, *, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ModelUnavailableError when `model_id` is a hub id that is not cached and the hub is out of reach."""
    if not model_id or not looks_like_hub_id(model_id) or _cached(model_id):
        return
    why = hub_offline_reason(timeout_s=timeout_s)
    if why is None:
        return
    raise ModelUnavailableError(
        f"model {model_id!r} is not a local directory and not in the Hugging Face cache, and {why}: "
        f"download it where there is network (huggingface-cli download {model_id}) and copy the cache here, "
        "or pass a local checkpoint directory as --model-id (or model_id=/path in a config)")
