"""How the decision service runs: address, workers, local mode, request limits.

Unknown settings are refused, so a typo is an error naming the key, not a silent default. The
rate limit is kept in each process (a token bucket per API key, see
:class:`nextbest.serve.security.RateLimiter`), so with several uvicorn workers each one enforces
its share: ``rate_per_key / workers`` requests per second and ``burst / workers`` at once. The
sum over the workers is the configured figure when the server spreads requests evenly, which it
does on average; one worker alone never lets a key go faster than its share.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from nextbest.errors import ConfigError
from nextbest.serve.security import check_scopes

__all__ = ["ServeSettings"]

_LOOPBACK_NAMES = {"localhost"}


class ServeSettings(BaseModel):
    """Settings of ``nextbest serve``.

    Parameters
    ----------
    host, port
        Where the server listens; the default answers on this machine only.
    workers
        uvicorn worker processes.
    local
        Local mode, for the demo's dashboard: requests without an API key get
        ``local_scopes``. A key that is given is still checked. Only allowed when ``host`` is a
        loopback address, so a keyless service is never reachable from the network.
    local_scopes
        The scopes a keyless request has in local mode.
    max_body_bytes
        Larger request bodies are refused with 413, whether announced by ``Content-Length`` or
        streamed in chunks.
    rate_per_key, burst
        Token bucket per API key for the whole service: requests per second, and requests at
        once after a quiet spell. Each worker enforces ``1 / workers`` of both.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1, le=256)
    local: bool = False
    local_scopes: tuple[str, ...] = ("profiles",)
    max_body_bytes: int = Field(1_048_576, ge=1)
    rate_per_key: float = Field(1000.0, gt=0, allow_inf_nan=False)
    burst: int = Field(2000, ge=1)

    @field_validator("local_scopes")
    @classmethod
    def _known_scopes(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            return check_scopes(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _local_only_on_loopback(self) -> ServeSettings:
        if self.local and not _is_loopback(self.host):
            raise ValueError(
                f"local mode serves requests without an API key, so it must listen on this "
                f"machine only: expected host 127.0.0.1, ::1 or localhost, got {self.host!r}"
            )
        return self

    @property
    def worker_rate(self) -> float:
        """Requests per second per key that one worker lets through."""
        return self.rate_per_key / self.workers

    @property
    def worker_burst(self) -> int:
        """The bucket size per key in one worker (at least one request)."""
        return max(1, self.burst // self.workers)

    def db_path(self, workspace_root: Path) -> Path:
        """The service's SQLite file, ``WORKSPACE/serving/online.db`` (its folder is created)."""
        folder = Path(workspace_root) / "serving"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / "online.db"


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
