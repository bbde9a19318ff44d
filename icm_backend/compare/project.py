"""Compare a live Label Studio project: crowd = annotations, ICM = predictions; flag disagreements.

How a disagreement task is flagged (visible in the Data Manager):
  * one prediction per flagged task with model_version REVIEW_VERSION ("icm-compare-review"):
    - if the labeling config has a Choices control with a "needs_review" choice, the prediction
      selects it, plus the reason in a TextArea when the config has one (name containing
      "reason", else the first TextArea);
    - otherwise it selects the crowd-majority label (ICM's label when the crowd is split) in the
      main Choices control, so the reviewer sees the crowd's answer next to ICM's.
    In the Data Manager: column "Prediction model versions" shows icm-compare-review (filter on
    it to get the review queue); "Predictions results" shows needs_review / the label.
  * task meta["icm_compare"] = {kind, rank, score, reason, votes, icm_label, icm_confidence}
    for scripts and exports (meta is not a Data Manager column in LS 1.23).
Annotations, `is_labeled` and task data are never touched. Re-running replaces the previous
review predictions, so flags do not pile up.
Annotations marked ground_truth are used as gold, not as crowd votes.

    from icm_backend.compare.project import compare_project
    out = compare_project("http://localhost:8080", api_key, project_id=3, report_path="r.html")
    out.flagged  # task ids flagged for review
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from icm_backend.compare.data import CompareInput, CrowdLabel
from icm_backend.compare.disagreements import Thresholds
from icm_backend.compare.pipeline import CompareResult, compare
from icm_backend.errors import InputError
from icm_backend.engine.types import Prediction
from icm_backend.labelstudio.client import LSClient
from icm_backend.labelstudio.config import LabelConfigError, ProjectSpec, parse_label_config
from icm_backend.labelstudio.annotations import annotation_label, unchanged_from_prediction

REVIEW_VERSION = "icm-compare-review"


@dataclass
class ProjectCompare:
    result: CompareResult
    config: ProjectSpec
    flagged: list[int] = field(default_factory=list)
    flag_method: str = ""  # "needs_review choice (+reason)" or "crowd-majority prediction"


def _choice(result, from_name: str) -> str | None:
    for item in result or []:
        if item.get("from_name") == from_name and item.get("type") == "choices":
            choices = (item.get("value") or {}).get("choices") or []
            if choices:
                return str(choices[0])
    return None


def _client(client_or_url, api_key) -> LSClient:
    if isinstance(client_or_url, LSClient):
        return client_or_url
    if isinstance(client_or_url, str):
        if not api_key:
            raise InputError("an API key is required (--ls-api-key or LABEL_STUDIO_API_KEY)")
        return LSClient(client_or_url, api_key)
    return LSClient.wrap(client_or_url)  # an SDK client


def _spec(label_config) -> ProjectSpec:
    try:
        spec = parse_label_config(label_config)
    except LabelConfigError as exc:
        raise InputError(f"project field 'label_config': {exc}") from None
    if spec.control_type != "choices":
        raise InputError("project field 'label_config' has no <Choices> control to compare labels on")
    return spec


def read_project(client: LSClient, project_id: int, icm_model_version: str | None = None,
                 label_set: list[str] | None = None) -> tuple[CompareInput, ProjectSpec, list]:
    cfg = _spec(client.project(project_id).get("label_config"))
    tasks = client.tasks_with_labels(project_id)
    users = client.users()
    crowd, gold, preds, warnings = [], {}, {}, []
    no_score = 0
    for t in tasks:
        tid = int(t.get("id"))
        for ann in t.get("annotations") or []:
            if ann.get("was_cancelled"):
                continue
            label = _choice(ann.get("result"), cfg.from_name)
            if label is None:
                continue
            if ann.get("ground_truth"):
                gold[tid] = label
                continue
            if unchanged_from_prediction(ann, annotation_label(ann.get("result") or [], cfg)[0],
                                         t.get("predictions") or [], cfg):
                continue  # a prediction accepted through LS: the model's label, not a crowd label
            who = ann.get("completed_by")
            crowd.append(CrowdLabel(tid, users.get(who, str(who)), label))
        best = None
        for p in t.get("predictions") or []:
            version = p.get("model_version") or ""
            if version == REVIEW_VERSION or (icm_model_version and version != icm_model_version):
                continue
            label = _choice(p.get("result"), cfg.from_name)
            if label is None:
                continue
            score = p.get("score")
            if score is None:
                no_score += 1
                continue
            if best is None or (p.get("id") or 0) > best[0]:  # newest prediction wins
                best = (p.get("id") or 0, label, float(score))
        if best:
            preds[tid] = Prediction(tid, best[1], min(max(best[2], 0.0), 1.0))
    if no_score:
        warnings.append(f"{no_score} predictions without field 'score' were ignored (ICM predictions carry a score)")
    if not preds:
        raise InputError(f"project {project_id}: no prediction with a '{cfg.from_name}' choice and a score "
                         "(run ICM predictions first)")
    if not crowd:
        raise InputError(f"project {project_id}: no annotation with a '{cfg.from_name}' choice (no crowd labels)")
    inp = CompareInput(predictions=preds, crowd=crowd, gold=gold, label_set=sorted(label_set or cfg.choice_values),
                       warnings=warnings, source=f"Label Studio project {project_id}")
    return inp, cfg, tasks


def flag_disagreements(client: LSClient, result: CompareResult, cfg: ProjectSpec, tasks: list,
                       max_flags: int | None = None) -> tuple[list[int], str]:
    """Replace earlier review predictions, then add one per disagreement task (see module doc)."""
    for t in tasks:
        for p in t.get("predictions") or []:
            if p.get("model_version") == REVIEW_VERSION:
                client.delete_prediction(p.get("id"))
    meta_by_task = {int(t.get("id")): (t.get("meta") or {}) for t in tasks}
    flagged = []
    dis = result.disagreements[:max_flags] if max_flags else result.disagreements
    review_from, reason_from = cfg.review.choices_name, cfg.review.reason_name if cfg.review.choices_name else None
    method = "needs_review choice" + (" + reason" if reason_from else "") if review_from \
        else "crowd-majority prediction"
    for rank, d in enumerate(dis, 1):
        if review_from:
            res = [{"from_name": review_from, "to_name": cfg.to_name, "type": "choices",
                    "value": {"choices": [cfg.review.choice_value]}}]
            if reason_from:
                res.append({"from_name": reason_from, "to_name": cfg.to_name, "type": "textarea",
                            "value": {"text": [f"{d.kind}: {d.reason}"]}})
        else:
            res = [{"from_name": cfg.from_name, "to_name": cfg.to_name, "type": "choices",
                    "value": {"choices": [d.majority or d.icm_label]}}]
        client.create_prediction(d.task, {"result": res, "score": float(min(max(d.score, 0.0), 1.0)),
                                          "model_version": REVIEW_VERSION})
        meta = dict(meta_by_task.get(d.task) or {})
        meta["icm_compare"] = {"kind": d.kind, "rank": rank, "score": d.score, "reason": d.reason,
                               "votes": d.votes, "icm_label": d.icm_label, "icm_confidence": d.icm_confidence}
        client.update_task_meta(d.task, meta)
        flagged.append(d.task)
    return flagged, method


def compare_project(client_or_url, api_key: str | None = None, project_id: int | None = None, *,
                    thresholds: Thresholds | None = None, flag: bool = True, label_set: list[str] | None = None,
                    icm_model_version: str | None = None, report_path: str | Path | None = None,
                    json_path: str | Path | None = None, max_flags: int | None = None) -> ProjectCompare:
    """Read the project, compare, optionally write report/JSON and flag disagreement tasks."""
    if project_id is None:
        raise InputError("project_id is required")
    client = _client(client_or_url, api_key)
    inp, cfg, tasks = read_project(client, int(project_id), icm_model_version, label_set)
    result = compare(inp, thresholds)
    out = ProjectCompare(result=result, config=cfg)
    if flag:
        out.flagged, out.flag_method = flag_disagreements(client, result, cfg, tasks, max_flags)
        result.summary["flagged_for_review"] = {"tasks": out.flagged, "method": out.flag_method,
                                                "model_version": REVIEW_VERSION}
    if report_path:
        from icm_backend.compare.report_html import write_html_report

        write_html_report(result, report_path, title=f"ICM vs crowd labels — Label Studio project {project_id}")
    if json_path:
        Path(json_path).write_text(json.dumps(result.summary, indent=2) + "\n", encoding="utf-8")
    return out
