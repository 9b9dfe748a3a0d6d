"""The hub as the CLI sees it: the database directly, or a running server's ops API.

Both give the same operations and return the same records, so every `loradock adapters` command works either
way (`--server URL` picks the second).
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any, Protocol

import httpx

from adapters.base_models import local_model_folder, resolve_base_model
from adapters.drift.sample import ProfileSample, store_sample_profile
from adapters.errors import ConflictError, GoneError, HubError, InvalidAdapterError, NotFoundError, TooLargeError
from adapters.fingerprint import BaseModelSpec
from adapters.hub import Hub
from adapters.records import AdapterView, AliasTarget, AliasView, VersionView
from adapters.settings import Settings
from adapters.sources import ARCHIVE_SUFFIXES, HF_SCHEME, stage_source

HTTP_TIMEOUT_S = 600.0


class HubClient(Protocol):
    def register(self, name: str, source: str, metadata: dict[str, Any]) -> VersionView: ...
    def list_adapters(self) -> list[AdapterView]: ...
    def get_adapter(self, name: str) -> AdapterView: ...
    def set_alias(self, name: str, alias: str, targets: list[AliasTarget]) -> AliasView: ...
    def delete_alias(self, name: str, alias: str) -> None: ...
    def retire(self, name: str, version: int, *, purge: bool) -> VersionView: ...
    def pull(self, name: str, version: int, out: Path) -> Path: ...
    def set_drift_profile(self, name: str, version: int, sample: ProfileSample) -> dict[str, Any]: ...


class LocalHub:
    """Operations on the database and store of this machine's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = Hub.open(settings)

    def register(self, name: str, source: str, metadata: dict[str, Any]) -> VersionView:
        model = resolve_base_model(self.settings.base_model, self.settings.models_dir)
        base = BaseModelSpec.from_folder(local_model_folder(model))
        staged = stage_source(self.hub.store, source, self.hub.registry.limits)
        return self.hub.registry.register(name, staged, base, created_by="cli", metadata=metadata)

    def list_adapters(self) -> list[AdapterView]:
        return self.hub.registry.list_adapters()

    def get_adapter(self, name: str) -> AdapterView:
        return self.hub.registry.get_adapter(name)

    def set_alias(self, name: str, alias: str, targets: list[AliasTarget]) -> AliasView:
        return self.hub.registry.set_alias(name, alias, targets, updated_by="cli")

    def delete_alias(self, name: str, alias: str) -> None:
        self.hub.registry.delete_alias(name, alias)

    def retire(self, name: str, version: int, *, purge: bool) -> VersionView:
        registry = self.hub.registry
        return registry.purge(name, version) if purge else registry.deprecate(name, version)

    def pull(self, name: str, version: int, out: Path) -> Path:
        view = self.hub.registry.get_version(name, version)
        source = self.hub.store.path(view.sha256)
        if not source.is_dir():
            raise NotFoundError(f"the files of {view.ref} were purged")
        shutil.copytree(source, out, dirs_exist_ok=True)
        return out

    def set_drift_profile(self, name: str, version: int, sample: ProfileSample) -> dict[str, Any]:
        from adapters.drift.features import Embedder

        view = self.hub.registry.get_version(name, version)
        return store_sample_profile(self.hub.drift, view, sample, Embedder(), "cli")


class RemoteHub:
    """Operations through a running server's ops API (`/v1/adapters`)."""

    def __init__(self, url: str, api_key: str | None) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=HTTP_TIMEOUT_S)

    def register(self, name: str, source: str, metadata: dict[str, Any]) -> VersionView:
        path = Path(source).expanduser()
        if source.startswith(HF_SCHEME) or not path.exists():
            body = {"name": name, "source": source, "metadata": metadata}
            return VersionView.model_validate(self._call("POST", "/v1/adapters", json=body))
        form = {"name": name, "metadata": json.dumps(metadata)}
        if path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES):
            with path.open("rb") as stream:
                return VersionView.model_validate(
                    self._call("POST", "/v1/adapters", data=form, files=[("file", (path.name, stream))])
                )
        files = sorted(p for p in path.iterdir() if p.is_file())
        streams = [(p.name, p.open("rb")) for p in files]
        try:
            upload = [("file", (name, stream)) for name, stream in streams]
            return VersionView.model_validate(self._call("POST", "/v1/adapters", data=form, files=upload))
        finally:
            for _, stream in streams:
                stream.close()

    def list_adapters(self) -> list[AdapterView]:
        return [AdapterView.model_validate(item) for item in self._call("GET", "/v1/adapters")["data"]]

    def get_adapter(self, name: str) -> AdapterView:
        return AdapterView.model_validate(self._call("GET", f"/v1/adapters/{name}"))

    def set_alias(self, name: str, alias: str, targets: list[AliasTarget]) -> AliasView:
        body = {"targets": [target.model_dump() for target in targets]}
        return AliasView.model_validate(self._call("PUT", f"/v1/adapters/{name}/aliases/{alias}", json=body))

    def delete_alias(self, name: str, alias: str) -> None:
        self._call("DELETE", f"/v1/adapters/{name}/aliases/{alias}")

    def retire(self, name: str, version: int, *, purge: bool) -> VersionView:
        path = f"/v1/adapters/{name}/versions/{version}"
        return VersionView.model_validate(self._call("DELETE", path, params={"purge": str(purge).lower()}))

    def pull(self, name: str, version: int, out: Path) -> Path:
        response = self._raw("GET", f"/v1/adapters/{name}/versions/{version}/download")
        out.mkdir(parents=True, exist_ok=True)
        with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as bundle:
            bundle.extractall(out, filter="data")
        return out

    def set_drift_profile(self, name: str, version: int, sample: ProfileSample) -> dict[str, Any]:
        path = f"/v1/adapters/{name}/versions/{version}/drift-profile"
        return self._call("PUT", path, json=sample.model_dump())  # type: ignore[no-any-return]

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._raw(method, path, **kwargs)
        return response.json() if response.content else None

    def _raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self.http.request(method, path, **kwargs)
        if response.status_code < 400:
            return response
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:500]
        error = _STATUS_ERRORS.get(response.status_code, HubError)
        raise error(f"{response.status_code} from {self.http.base_url}: {message}")


_STATUS_ERRORS: dict[int, type[HubError]] = {
    400: InvalidAdapterError,
    404: NotFoundError,
    409: ConflictError,
    410: GoneError,
    413: TooLargeError,
}


def open_client(settings: Settings, server: str | None, api_key: str | None) -> HubClient:
    return RemoteHub(server, api_key) if server else LocalHub(settings)
