"""The model store: versioned artefacts in the workspace, each with a manifest.

Layout: ``<workspace>/models/<kind>/v0001/`` holds ``model.joblib`` (the fitted estimator,
written with joblib) and ``manifest.json``: kind, version, when it was made, the training
window, the features and their kinds, the held-out metrics, the versions of the libraries
that made it, and a hash of the training data. Versions only grow; nothing is overwritten.

A model is loaded only with its manifest, and :meth:`Manifest.check_features` refuses data
whose columns differ from those it was trained on, naming them. The artefacts are pickles:
load only models your own workspace wrote.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import joblib
import pandas as pd

from nextbest.errors import ConfigError, DataError

__all__ = ["Manifest", "ModelStore", "data_hash"]

_LIBRARIES = ("nextbest", "lightgbm", "scikit-learn", "numpy", "pandas", "scipy", "implicit")
_VERSION = re.compile(r"^v(\d{4,})$")


def data_hash(frame: pd.DataFrame) -> str:
    """A short SHA-256 of a frame's content, columns included (the same data, the same hash)."""
    digest = hashlib.sha256(",".join(map(str, frame.columns)).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def _libraries() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in _LIBRARIES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


@dataclass
class Manifest:
    """What a stored model is, what it was trained on, and how well it did."""

    kind: str
    version: int
    created_at: str
    window: dict[str, str]
    features: dict[str, str]
    metrics: dict[str, float]
    data_hash: str
    params: dict[str, Any] = field(default_factory=dict)
    libraries: dict[str, str] = field(default_factory=_libraries)

    @property
    def name(self) -> str:
        return f"{self.kind} v{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_features(self, columns: list[str] | pd.Index) -> None:
        """Refuse data that lacks a feature the model was trained on."""
        have = set(columns)
        missing = [c for c in self.features if c not in have]
        if missing:
            raise DataError(
                f"{self.name} was trained on {len(self.features)} features and the data lacks "
                f"{len(missing)}: {', '.join(missing[:10])}; rebuild the features with this "
                f"version of nextbest or retrain ('nextbest train {self.kind}')"
            )


class ModelStore:
    """Versioned models of a workspace (``<workspace>/models``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _versions(self, kind: str) -> list[int]:
        folder = self.root / kind
        if not folder.is_dir():
            return []
        found = (_VERSION.match(p.name) for p in folder.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def save(
        self,
        kind: str,
        model: Any,
        *,
        window: dict[str, str],
        features: dict[str, str],
        metrics: dict[str, float],
        data_hash: str,
        params: dict[str, Any] | None = None,
    ) -> Manifest:
        """Write ``model`` as the next version of ``kind`` and return its manifest."""
        if not re.fullmatch(r"[a-z][a-z0-9_]*", kind):
            raise ConfigError(f"model kind must be lower-case letters, digits and _, got {kind!r}")
        number = (self._versions(kind) or [0])[-1] + 1
        folder = self.root / kind / f"v{number:04d}"
        folder.mkdir(parents=True)
        manifest = Manifest(
            kind=kind,
            version=number,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            window=window,
            features=features,
            metrics={k: float(v) for k, v in metrics.items()},
            data_hash=data_hash,
            params=params or {},
        )
        joblib.dump(model, folder / "model.joblib")
        tmp = folder / "manifest.json.tmp"
        tmp.write_text(json.dumps(manifest.to_dict(), indent=2) + "\n", encoding="utf-8")
        tmp.replace(folder / "manifest.json")
        return manifest

    def manifest(self, kind: str, version: int | None = None) -> Manifest:
        """The manifest of ``kind`` at ``version`` (default: the latest)."""
        versions = self._versions(kind)
        if not versions:
            known = ", ".join(self.kinds()) or "none yet"
            raise ConfigError(
                f"no trained {kind!r} model in {self.root} (trained kinds: {known}); "
                f"run 'nextbest train {kind}'"
            )
        number = versions[-1] if version is None else version
        path = self.root / kind / f"v{number:04d}" / "manifest.json"
        if number not in versions or not path.exists():
            raise ConfigError(
                f"{kind} has no version {number}; versions: {', '.join(str(v) for v in versions)}"
            )
        return Manifest(**json.loads(path.read_text(encoding="utf-8")))

    def load(self, kind: str, version: int | None = None) -> tuple[Any, Manifest]:
        """The fitted model and its manifest (default: the latest version)."""
        manifest = self.manifest(kind, version)
        path = self.root / kind / f"v{manifest.version:04d}" / "model.joblib"
        return joblib.load(path), manifest

    def kinds(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self._versions(p.name))

    def list(self) -> list[Manifest]:
        """Every stored version, by kind then version."""
        return [self.manifest(k, v) for k in self.kinds() for v in self._versions(k)]
