"""The Hugging Face hub, asked before anything heavy loads: offline (``HF_HUB_OFFLINE``) a model or
data set that is not in the local cache is said at once; online, a hub that cannot be reached is
said in seconds rather than after the libraries' retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

from ftmix.errors import FtmixError


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("1", "true", "yes", "on")


def check_reachable(what: str, timeout_s: float = 3.0) -> None:
    """Online: one TCP connection to the hub's host, or one FtmixError naming ``what``."""
    if offline():
        return

    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout_s).close()
    except OSError:
        raise FtmixError(f"{what} is not on this machine, and the hub ({host}) cannot be reached; download it "
                         "elsewhere and give its local path, or set HF_HUB_OFFLINE=1 to use the local cache") from None


def check_model(hub_id: str) -> None:
    """A hub model id that can be loaded: in the local cache when offline, else a reachable hub."""
    if not offline():
        check_reachable(f"model {hub_id!r}")
        return
    # lazy: only for a hub lookup
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(hub_id, "config.json")
    except Exception:  # noqa: BLE001 - an id the hub library refuses (bad characters): not cached
        cached = None
    if not isinstance(cached, str):
        raise FtmixError(f"model {hub_id!r} is not in the local hub cache and the hub is offline (HF_HUB_OFFLINE=1); "
                         "give a local folder or a .gguf file, or --random-init for its shape with random weights")
