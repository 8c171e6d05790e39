"""Logger factories that keep runs from failing or hanging for want of a network."""

from __future__ import annotations

import logging
import netrc
import os

log = logging.getLogger(__name__)


def wandb_api_key_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout: float = 3.0) -> str | None:
    """None when W&B's server (WANDB_BASE_URL, default https://api.wandb.ai) accepts a TCP
    connection within `timeout` seconds, else why not (one short phrase)."""
    import socket
    import threading
    from urllib.parse import urlparse

    url = os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai"
    u = urlparse(url)
    port = u.port or (443 if u.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            with socket.create_connection((u.hostname or "", port), timeout=timeout):
                result.append(None)
        except (OSError, ValueError) as e:
            result.append(f"cannot reach {url} ({getattr(e, 'strerror', None) or e})")

    # in a thread: a name lookup without network can block longer than the socket timeout
    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else f"cannot reach {url} (no answer in {timeout:g} s)"


def wandb_logger(mode: str = "auto", **kwargs):
    """A WandbLogger that runs offline unless an API key is set and mode allows online.

    mode: "auto" (online only with an API key, else offline), "online", "offline", "disabled".
    WANDB_MODE in the environment wins over the config. Offline runs land in the run dir and
    can be uploaded later with `wandb sync <run dir>/wandb/offline-run-*`.
    """
    from pytorch_lightning.loggers import WandbLogger

    env_mode = os.environ.get("WANDB_MODE")
    if env_mode:
        mode = env_mode
    elif mode == "auto":
        mode = "online" if wandb_api_key_present() else "offline"
    if mode == "online" and not wandb_api_key_present():
        log.warning("wandb: no API key found; running offline")
        mode = "offline"
    if mode == "online":  # a key but no network: offline now, not a 30 s hang and a traceback
        why = wandb_reachable()
        if why:
            log.warning("wandb: %s; running offline (upload later with `wandb sync "
                        "RUN_DIR/wandb/offline-run-*`)", why)
            mode = "offline"
    os.environ["WANDB_MODE"] = mode
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ.setdefault("WANDB_INIT_TIMEOUT", "30")
    offline = mode in ("offline", "disabled")
    return WandbLogger(offline=offline, mode=mode, **kwargs)
