"""The few Label Studio API calls a job needs, through label-studio-sdk (legacy token or PAT alike)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


class LabelStudioUnavailable(Exception):
    """No URL/API key known for this project, or LS refused: the job falls back to request data."""


@dataclass
class LSClient:
    url: str
    api_key: str
    timeout_s: float = 60.0

    def __post_init__(self):
        from label_studio_sdk import LabelStudio

        # The SDK exchanges a Personal Access Token (JWT refresh token) for access tokens itself.
        self._client = LabelStudio(base_url=self.url.rstrip("/"), api_key=self.api_key, timeout=self.timeout_s)

    def project_tasks(self, project: int, page_size: int = 500) -> list[dict]:
        tasks = []
        for t in self._client.tasks.list(project=project, page_size=page_size):
            tasks.append({"id": t.id, "data": dict(t.data or {})})
        return tasks

    def existing_prediction_tasks(self, project: int, model_version: str) -> set[int]:
        """Task ids that already hold a prediction with this version (makes re-pushing idempotent)."""
        return {p.task for p in self._client.predictions.list(project=project)
                if p.model_version == model_version and p.task is not None}

    def create_prediction(self, task_id: int, item: dict) -> None:
        self._client.predictions.create(task=task_id, result=item["result"], score=item.get("score"),
                                        model_version=item["model_version"])

    def set_project_model_version(self, project: int, model_version: str) -> None:
        # The Data Manager's score column averages predictions whose version equals this field.
        self._client.projects.update(id=project, model_version=model_version)


def client_for(url: str | None, api_key: str | None) -> LSClient:
    if not url or not api_key:
        raise LabelStudioUnavailable(
            "LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY are not set and /setup gave no hostname/access_token")
    return LSClient(url=url, api_key=api_key)
