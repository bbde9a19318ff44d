"""The one Label Studio API client (label-studio-sdk 2.1.2; a legacy token or a Personal Access Token).

Everything that talks to a Label Studio server goes through LSClient: the ICM job (tasks, predictions,
the project's model_version), fine-tuning (annotations) and the crowd comparison (annotations, users,
review predictions). Methods return plain dicts, never SDK objects.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class LabelStudioUnavailable(Exception):
    """No URL/API key known for this project, or LS refused: the job falls back to request data."""


def _plain(obj) -> dict:
    return obj.model_dump() if hasattr(obj, "model_dump") else dict(obj)


class LSClient:
    def __init__(self, url: str, api_key: str, timeout_s: float = 60.0, sdk=None):
        self.url = url
        if sdk is None:
            from label_studio_sdk import LabelStudio

            # The SDK exchanges a Personal Access Token (JWT refresh token) for access tokens itself.
            sdk = LabelStudio(base_url=url.rstrip("/"), api_key=api_key, timeout=timeout_s)
        self.sdk = sdk

    @classmethod
    def wrap(cls, sdk) -> "LSClient":
        """An LSClient over an SDK client someone already built."""
        return cls(url=str(getattr(sdk, "base_url", "") or ""), api_key="", sdk=sdk)

    # -- projects -------------------------------------------------------------------------
    def project(self, project: int) -> dict:
        return _plain(self.sdk.projects.get(id=project))

    def set_project_model_version(self, project: int, model_version: str) -> None:
        # The Data Manager's score column averages predictions whose version equals this field.
        self.sdk.projects.update(id=project, model_version=model_version)

    def users(self) -> dict[int, str]:
        """User id -> email (or name); empty where listing users is forbidden (non-admin tokens)."""
        try:
            return {u.id: (u.email or u.username or str(u.id)) for u in self.sdk.users.list()}
        except Exception:
            return {}

    # -- tasks ----------------------------------------------------------------------------
    def _task_pages(self, project: int, page_size: int, **kw):
        """Every task of the project, page by page. Stops at the `total` LS reports: the SDK's pager asks
        for one page past the last, which LS answers with 404 "Invalid page" (an error in its log each time)."""
        page, seen = 1, 0
        while True:
            pager = self.sdk.tasks.list(project=project, page=page, page_size=page_size, **kw)
            items = list(pager.items or [])
            yield from items
            seen += len(items)
            total = getattr(pager.response, "total", None)
            if not items or len(items) < page_size or (total is not None and seen >= total):
                return
            page += 1

    def tasks_with_labels(self, project: int, page_size: int = 200) -> list[dict]:
        """Every task with its annotations and predictions (and meta), as plain dicts."""
        out = []
        for t in self._task_pages(project, page_size, fields="all"):
            d = _plain(t)
            out.append({"id": d.get("id"), "data": d.get("data") or {}, "meta": d.get("meta") or {},
                        "annotations": [_plain(a) for a in d.get("annotations") or []],
                        "predictions": [_plain(p) for p in d.get("predictions") or []]})
        return out

    def update_task_meta(self, task_id: int, meta: dict) -> None:
        self.sdk.tasks.update(id=str(task_id), meta=meta)

    def update_task_data(self, task_id: int, data: dict) -> None:
        """Replace a task's data (LS 1.23.2's PATCH replaces the whole `data` object: pass all of it)."""
        self.sdk.tasks.update(id=str(task_id), data=data)

    # -- Data Manager tabs (views) ----------------------------------------------------------
    # Raw requests through the SDK's HTTP client (its auth and base URL): the SDK's typed view models
    # re-shape filters, and these payloads must reach LS exactly as /api/dm/views takes them.
    def _api(self, method: str, path: str, **kw):
        resp = self.sdk._client_wrapper.httpx_client.request(path, method=method, **kw)
        if not 200 <= resp.status_code < 300:
            raise RuntimeError(f"{method} /{path}: Label Studio answered {resp.status_code}: {resp.text[:300]}")
        return resp.json() if resp.content else None

    def views(self, project: int) -> list[dict]:
        """The project's Data Manager tabs: [{"id", "project", "data": {"title", "filters", "ordering", ...}}]."""
        return list(self._api("GET", "api/dm/views/", params={"project": project}) or [])

    def create_view(self, project: int, data: dict) -> dict:
        return self._api("POST", "api/dm/views/", json={"project": project, "data": data})

    def update_view(self, view_id: int, project: int, data: dict) -> dict:
        return self._api("PATCH", f"api/dm/views/{view_id}/", json={"project": project, "data": data})

    # -- predictions ----------------------------------------------------------------------
    # LS's bulk import stores at most PREDICTION_IMPORT_BATCH_SIZE (500) predictions per bulk_create, one
    # transaction: a request of <= 500 items is stored whole or not at all.
    IMPORT_BATCH = 500

    def existing_prediction_tasks(self, project: int, model_version: str) -> set[int]:
        """Task ids that already hold a prediction with this version (makes re-pushing idempotent)."""
        return {p.task for p in self.sdk.predictions.list(project=project)
                if p.model_version == model_version and p.task is not None}

    def predictions_of(self, project: int, model_version: str | None = None) -> list[dict]:
        """The project's predictions (id, task, model_version, score), optionally of one version."""
        return [{"id": p.id, "task": p.task, "model_version": p.model_version, "score": p.score}
                for p in self.sdk.predictions.list(project=project)
                if model_version is None or p.model_version == model_version]

    def import_predictions(self, project: int, items: dict[int, dict]) -> int:
        """Bulk write: {task id: {"result", "score", "model_version"}} in one request (<= IMPORT_BATCH items,
        so LS stores all or none). Returns how many LS created."""
        if len(items) > self.IMPORT_BATCH:
            raise ValueError(f"items: {len(items)} > {self.IMPORT_BATCH} per request (LS's atomic batch)")
        from label_studio_sdk import PredictionRequest

        reply = self.sdk.projects.import_predictions(id=project, request=[
            PredictionRequest(task=tid, result=item["result"], score=item.get("score"),
                              model_version=item["model_version"]) for tid, item in items.items()])
        return int(getattr(reply, "created", None) or 0)

    def create_prediction(self, task_id: int, item: dict) -> None:
        self.sdk.predictions.create(task=task_id, result=item["result"], score=item.get("score"),
                                    model_version=item["model_version"])

    def delete_prediction(self, prediction_id: int) -> None:
        self.sdk.predictions.delete(id=prediction_id)

def client_for(url: str | None, api_key: str | None) -> LSClient:
    if not url or not api_key:
        raise LabelStudioUnavailable(
            "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not set and /setup gave no hostname/access_token")
    return LSClient(url=url, api_key=api_key)
