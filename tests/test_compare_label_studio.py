"""E2E against a real Label Studio 1.23.2: three annotators (users created through the API) label
the same tasks, ICM predictions carry scores, compare_project builds the report from the live
project and flags the disagreement tasks so the Data Manager shows them.

Uses the shared harness tests/label_studio_harness.py (fresh data dir, free port, killed at the end).
"""

from __future__ import annotations

import json

import pytest

from icm_backend.cli import main

harness = pytest.importorskip("label_studio_harness", reason="tests/label_studio_harness.py not available")

pytestmark = pytest.mark.slow

CONFIG = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text" choice="single"><Choice value="True"/><Choice value="False"/></Choices>
<Choices name="review" toName="text" choice="single"><Choice value="needs_review"/></Choices>
<TextArea name="review_reason" toName="text" editable="true"/></View>"""
CONFIG_PLAIN = """<View><Text name="text" value="$text"/>
<Choices name="label" toName="text" choice="single"><Choice value="True"/><Choice value="False"/></Choices></View>"""

# votes of w1, w2, w3 (None = no annotation) and ICM (label, confidence) per task
TASKS = [
    ("TTT", ("True", 0.90)),
    ("FFF", ("True", 0.95)),  # ICM confident, crowd unanimous against -> flag, rank 1
    ("TFT", ("True", 0.70)),
    ("FFT", ("False", 0.85)),
    ("TTF", ("False", 0.90)),  # ICM confident, 2 of 3 against -> flag, rank 2
    ("TF-", ("True", 0.90)),  # crowd split 1-1, ICM confident -> flag, rank 3
]
WORD = {"T": "True", "F": "False"}


def _choice(label, name="label"):
    return [{"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [label]}}]


@pytest.fixture(scope="module")
def ls(tmp_path_factory):
    if harness.find_label_studio_bin() is None:
        pytest.skip("label-studio binary not found (ICM_LABEL_STUDIO_BIN or .venv-ls)")
    server = harness.LabelStudioServer.start(tmp_path_factory.mktemp("ls-compare"))
    yield server
    server.stop()


def _project(client, config, title):
    project = client.projects.create(title=title, label_config=config)
    client.projects.import_tasks(id=project.id, request=[{"text": f"claim {i}"} for i in range(len(TASKS))])
    ids = sorted(t.id for t in client.tasks.list(project=project.id))
    return project.id, ids


def _users(client, prefix):
    return [client.users.create(username=f"{prefix}{i}", email=f"{prefix}{i}@example.com",
                                password="not-a-real-pw-123") for i in (1, 2, 3)]


def _fill(client, ids, users):
    for tid, (votes, (icm_label, conf)) in zip(ids, TASKS):
        for user, v in zip(users, votes):
            if v != "-":
                client.annotations.create(id=tid, result=_choice(WORD[v]), completed_by=user.id)
        client.predictions.create(task=tid, result=_choice(icm_label), score=conf, model_version="icm-v1")


def _review_filter(client, pid):
    """The Data Manager's own filter: 'Prediction model versions' contains icm-compare-review."""
    q = {"filters": {"conjunction": "and", "items": [{"filter": "filter:tasks:predictions_model_versions",
                                                      "operator": "contains", "type": "List",
                                                      "value": ["icm-compare-review"]}]}}
    return sorted(t.id for t in client.tasks.list(project=pid, query=json.dumps(q)))


def test_live_project_report_and_flags(ls, tmp_path):
    from icm_backend.compare.project import REVIEW_VERSION, compare_project

    client = ls.client
    pid, ids = _project(client, CONFIG, "compare e2e")
    users = _users(client, "crowd")
    _fill(client, ids, users)
    client.annotations.create(id=ids[2], result=_choice("True"), ground_truth=True)  # admin's gold label

    out = compare_project(ls.url, ls.token, pid, report_path=tmp_path / "r.html", json_path=tmp_path / "s.json")
    s = json.loads((tmp_path / "s.json").read_text())
    assert s["n_annotators"] == 3 and s["n_tasks"] == 6 and s["n_majority_ties"] == 1
    assert sorted(a["worker"] for a in s["annotators"]) == [u.email for u in users]
    # ICM T T T F F vs majority T F T F T on tasks 0-4: 3/5; p_e = (3*3 + 2*2)/25 -> kappa 1/6
    assert s["accuracy_icm_vs_majority"] == pytest.approx(0.6)
    assert s["cohen_kappa_icm_vs_majority"] == pytest.approx(1 / 6, abs=1e-6)
    assert s["krippendorff_alpha_crowd"] is not None and s["accuracy_icm_vs_gold"] == pytest.approx(1.0)
    assert out.flagged == [ids[1], ids[4], ids[5]]
    assert out.flag_method == "needs_review choice + reason"
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 6 and "Label Studio project" in html

    # visible in the Data Manager: its filter finds exactly the flagged tasks
    assert _review_filter(client, pid) == sorted(out.flagged)
    q = {"filters": {"conjunction": "and", "items": [{"filter": "filter:tasks:predictions_results", "operator":
                                                      "contains", "type": "String", "value": "needs_review"}]}}
    assert sorted(t.id for t in client.tasks.list(project=pid, query=json.dumps(q))) == sorted(out.flagged)
    t1 = client.tasks.get(id=ids[1])
    assert t1.meta["icm_compare"]["kind"] == "icm_confident_crowd_against" and t1.meta["icm_compare"]["rank"] == 1
    review = [p for p in t1.predictions if p.model_version == REVIEW_VERSION]
    assert len(review) == 1
    kinds = {r["type"]: r["value"] for r in review[0].result}
    assert kinds["choices"] == {"choices": ["needs_review"]} and "crowd majority says False" in kinds["textarea"]["text"][0]
    assert t1.total_annotations == 3 and t1.is_labeled  # annotations untouched

    # the CLI on the live project; rerunning replaces the review predictions instead of piling up
    rc = main(["compare", "--ls-url", ls.url, "--ls-api-key", ls.token, "--ls-project", str(pid),
               "--json", str(tmp_path / "s2.json")])
    assert rc == 0
    assert json.loads((tmp_path / "s2.json").read_text())["flagged_for_review"]["tasks"] == out.flagged
    t1 = client.tasks.get(id=ids[1])
    assert sum(p.model_version == REVIEW_VERSION for p in t1.predictions) == 1
    # ICM's own prediction is still what the comparison reads
    assert json.loads((tmp_path / "s2.json").read_text())["accuracy_icm_vs_majority"] == pytest.approx(0.6)


def test_live_project_without_review_controls_flags_with_crowd_majority(ls):
    from icm_backend.compare.project import REVIEW_VERSION, compare_project

    client = ls.client
    pid, ids = _project(client, CONFIG_PLAIN, "compare plain")
    _fill(client, ids, _users(client, "plain"))
    out = compare_project(client, project_id=pid)
    assert out.flag_method == "crowd-majority prediction"
    assert _review_filter(client, pid) == sorted(out.flagged) == sorted([ids[1], ids[4], ids[5]])
    t4 = client.tasks.get(id=ids[4])
    review = [p for p in t4.predictions if p.model_version == REVIEW_VERSION][0]
    assert review.result[0]["value"] == {"choices": ["True"]}  # the crowd majority, next to ICM's False
