"""The Kubernetes API client the DRA side uses: lightkube's AsyncClient, configured once.

Configuration: the kubeconfig file given, else lightkube's detection (in-cluster
service account, then ``$KUBECONFIG``, then ``~/.kube/config``).
"""

from __future__ import annotations

from pathlib import Path

import httpx2
import lightkube
from lightkube import ApiError
from lightkube.config.kubeconfig import KubeConfig

__all__ = ["FIELD_MANAGER", "api_error_code", "kube_client", "kube_config_error"]

FIELD_MANAGER = "devplugin-host"
"""The field manager name every write of the host carries."""


def kube_client(
    kubeconfig: str | Path | None = None, *, timeout: float = 10.0
) -> lightkube.AsyncClient:
    """Return an AsyncClient for ``kubeconfig`` (or the detected configuration).

    ``timeout`` bounds every request (connect, read, write), so an API server that
    stops answering fails a request instead of hanging it.
    """
    config = KubeConfig.from_file(kubeconfig) if kubeconfig is not None else None
    return lightkube.AsyncClient(
        config=config,
        timeout=httpx2.Timeout(timeout),
        field_manager=FIELD_MANAGER,
        trust_env=kubeconfig is None,
    )


def kube_config_error(kubeconfig: str | Path | None = None) -> str | None:
    """Return why :func:`kube_client` cannot be configured from ``kubeconfig``, or None.

    Without ``kubeconfig``: why neither the in-cluster service account nor
    ``$KUBECONFIG`` / ``~/.kube/config`` gives a configuration.
    """
    try:
        if kubeconfig is not None:
            config = KubeConfig.from_file(kubeconfig)
        else:
            config = KubeConfig.from_env()
        config.get()
    except lightkube.ConfigError as exc:
        return str(exc)
    except Exception as exc:  # YAML errors, unreadable files, a file of the wrong shape
        return f"not a usable kubeconfig ({type(exc).__name__}: {exc})"
    return None


def api_error_code(exc: BaseException) -> int | None:
    """Return the HTTP status code of an API error (404, 409, ...), None for other failures."""
    if isinstance(exc, ApiError):
        code = getattr(exc.status, "code", None)
        if isinstance(code, int):
            return code
        return exc.response.status_code if exc.response is not None else None
    return None
