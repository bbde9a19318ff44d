"""A kept version on trial (finetune.trial), unit level: which version is on trial, the reviewers' sign test,
what acting on it writes, how a disagreement shows in a prediction, and the ICM job's trial pass with a fake
labeler. The real path (real Label Studio, smollm2, training) is tests/test_trial_e2e.py."""

from __future__ import annotations

import json

import pytest

from fake_labeler import fake_label_rows
from icm_backend.errors import InputError
from icm_backend.finetune import trial as T
from icm_backend.labelstudio import results as P
from icm_backend.labelstudio.config import parse_label_config
from icm_backend.server.config import ServerConfig
from icm_backend.server.model_host import ModelHost
from icm_backend.versions import current_name, list_versions, promote, versions_payload, versions_root
from test_icm_job_writeback import VERSION, FakeLS, make, run_job  # noqa: F401  (make is a fixture)
from test_server_protocol import CLASSIFY_XML


def fake_version(model_dir, n: int, promoted: bool | None, **gate) -> str:
    name = f"ft{n:04d}-20261128T000000"
    d = versions_root(model_dir) / name
    d.mkdir(parents=True)
    (d / "adapter_config.json").write_text("{}")
    (d / "metrics.json").write_text(json.dumps({"created_at": "now"}))
    if promoted is not None:
        (d / "gate.json").write_text(json.dumps({"promoted": promoted, "reason": "held-out 1 : 0", **gate}))
    return name


def record(challenger="ftX", against="base", pairs=None) -> T.TrialRecord:
    return T.TrialRecord(challenger, against, 7, pairs or {}, compared=10)


@pytest.mark.parametrize("human_sides, promote, retire", [
    ("ccc", True, False),    # 3 : 0, p = 0.125
    ("cc", False, False),    # 2 : 0, p = 0.25 > 0.2
    ("ccccs", True, False),  # 4 : 1, p = 0.1875
    ("sss", False, True),    # 0 : 3: the reviewers reject it at the same level
    ("cs", False, False),
    ("", False, False),
])
def test_decide_is_the_gates_sign_test_on_reviewed_disagreements(human_sides, promote, retire):
    pairs = {t: ("positive", "negative") for t in range(10)}  # the challenger says positive, the server negative
    human = {t: "positive" if s == "c" else "negative" for t, s in enumerate(human_sides)}
    human[99] = "positive"  # a task where the two agreed: no evidence either way
    v = T.decide(record(pairs=pairs), human)
    assert (v.b, v.c) == (human_sides.count("c"), human_sides.count("s"))
    assert v.reviewed == len(human_sides) and v.disagreements == 10
    assert (v.promote, v.retire) == (promote, retire)
    assert v.reason.startswith("promoted" if promote else "retired" if retire else "still on trial")


def test_a_human_label_neither_version_gave_counts_for_neither():
    pairs = {1: ("a", "b"), 2: ("a", "b"), 3: ("a", "b")}
    v = T.decide(record(pairs=pairs), {1: "c", 2: "c", 3: "a"})
    assert (v.reviewed, v.b, v.c) == (3, 1, 0)


def test_the_challenger_is_the_newest_kept_version_newer_than_the_serving_one(tmp_path):
    v1 = fake_version(tmp_path, 1, False)
    v2 = fake_version(tmp_path, 2, True)
    v3 = fake_version(tmp_path, 3, False)
    v4 = fake_version(tmp_path, 4, False, trial={"retire": True})
    fake_version(tmp_path, 5, None)  # no gate verdict (trained without a gate): never on trial
    assert T.challenger(tmp_path, "icm-gemma3-270m").name == v3  # newest kept, not retired, newer than base
    assert T.challenger(tmp_path, v2).name == v3
    assert T.challenger(tmp_path, v3) is None  # serving it: nothing newer is on trial
    assert T.challenger(tmp_path, v4) is None
    assert v1  # older than the serving version: never on trial again


def test_run_trial_promotes_and_records_the_verdict(tmp_path):
    v1 = fake_version(tmp_path, 1, False)
    T.write_trial(tmp_path, T.TrialRecord(v1, "icm-base", 3, {10: ("pos", "neg"), 11: ("pos", "neg"),
                                                               12: ("neg", "pos"), 13: ("pos", "neg")}, 40, 5))
    assert T.run_trial(tmp_path, 3, "icm-other", {10: "pos"}) is None  # made against another serving version
    assert T.run_trial(tmp_path, 4, "icm-base", {10: "pos"}) is None  # no record for this project
    v = T.run_trial(tmp_path, 3, "icm-base", {10: "pos", 11: "pos", 12: "neg", 1: "pos"})
    assert (v.b, v.c, v.reviewed, v.promote) == (3, 0, 3, True)
    assert current_name(tmp_path) == v1
    gate = next(x for x in list_versions(tmp_path) if x.name == v1).metrics["gate"]
    assert gate["promoted"] is True and gate["trial"]["b"] == 3 and gate["trial"]["project"] == 3
    assert gate["reason"].startswith("promoted by review after the gate kept it (held-out 1 : 0)")
    detail = versions_payload(tmp_path, "base")["details"][0]
    assert detail["trials"]["3"] == {"against": "icm-base", "compared": 40, "disagreements": 4, "job": 5,
                                     "updated_at": detail["trials"]["3"]["updated_at"]}
    assert T.challenger(tmp_path, "icm-base") is None  # promoted: no longer on trial


def test_run_trial_retires_a_rejected_version_and_waits_without_reviews(tmp_path):
    v1 = fake_version(tmp_path, 1, False)
    promote(tmp_path, "base")
    T.write_trial(tmp_path, T.TrialRecord(v1, "icm-base", 3, {t: ("pos", "neg") for t in range(5)}, 50))
    waiting = T.run_trial(tmp_path, 3, "icm-base", {})
    assert waiting.reviewed == 0 and "trial" not in json.loads((tmp_path / "versions" / v1 / "gate.json").read_text())
    v = T.run_trial(tmp_path, 3, "icm-base", {0: "neg", 1: "neg", 2: "neg"})
    assert v.retire and not v.promote and current_name(tmp_path) is None
    assert T.challenger(tmp_path, "icm-base") is None


def test_a_later_job_adds_to_the_record_and_a_new_serving_version_starts_it_afresh(tmp_path):
    v1 = fake_version(tmp_path, 1, False)
    T.write_trial(tmp_path, T.TrialRecord(v1, "icm-base", 3, {1: ("a", "b"), 2: ("a", "b")}, 10))
    T.write_trial(tmp_path, T.TrialRecord(v1, "icm-base", 3, {2: ("b", "a"), 3: ("a", "b")}, 8))
    assert T.read_trial(tmp_path, v1, 3).disagreements == {1: ("a", "b"), 2: ("b", "a"), 3: ("a", "b")}
    T.write_trial(tmp_path, T.TrialRecord(v1, "ft0000-x", 3, {4: ("a", "b")}, 8))
    assert T.read_trial(tmp_path, v1, 3).disagreements == {4: ("a", "b")}


def test_a_disagreement_is_flagged_and_scored_as_the_two_versions_mean_probability():
    spec = parse_label_config(CLASSIFY_XML)
    tp = P.TaskPrediction(7, [{"from_name": "sentiment", "to_name": "text", "type": "choices",
                               "value": {"choices": ["Positive"]}, "score": 0.9}], 0.9, label="Positive")
    assert P.on_trial(spec, tp, "ft0002-x", "Positive", 0.8) is tp  # they agree: nothing changes
    q = P.on_trial(spec, tp, "ft0002-x", "Negative", 0.7)
    assert q.flagged and q.score == pytest.approx((0.9 + 0.3) / 2) and q.label == "Positive"
    assert q.result[0]["value"] == {"choices": ["Positive"]} and q.result[0]["score"] == q.score
    assert tp.result[0]["score"] == 0.9  # the serving prediction is not modified in place
    assert ("version ft0002-x (trained on your labels, on trial) labels it 'Negative' (0.70; score shown 0.60, "
            "the two versions' mean)") in q.reason
    review = {r["from_name"]: r["value"] for r in q.result[1:]}
    assert review == {"needs_review": {"choices": ["needs review"]}, "review_reason": {"text": [q.reason]}}
    flagged = P.TaskPrediction(8, tp.result, 0.6, flagged=True, reason="low confidence 0.60", label="Positive")
    assert P.on_trial(spec, flagged, "v", "Negative", 0.9).reason.startswith("low confidence 0.60; version v")
    three = parse_label_config(CLASSIFY_XML.replace('<Choice value="Negative"/>',
                                                    '<Choice value="Negative"/><Choice value="Neutral"/>'))
    assert P.on_trial(three, tp, "v", "Neutral", 0.6).score == pytest.approx((0.9 + 0.2) / 2)


def test_icm_trial_must_be_a_switch():
    assert ServerConfig.from_env({}).trial is True
    assert ServerConfig.from_env({"ICM_TRIAL": "off"}).trial is False
    with pytest.raises(InputError, match="ICM_TRIAL='maybe'"):
        ServerConfig.from_env({"ICM_TRIAL": "maybe"})


def test_the_host_keeps_the_serving_and_the_trial_model_loaded(tmp_path):
    v1 = fake_version(tmp_path, 1, False)
    loads = []
    host = ModelHost(ServerConfig(model_dir=tmp_path, model_name="smollm2-135m"),
                     loader=lambda path: loads.append(path) or object())
    for version in (None, v1, None, v1, None):  # a job alternating shards between the two never reloads
        host.model(version)
    assert len(loads) == 2


def challenger_flips(ft_name):
    """A fake labeler: the base labels as fake_label_rows does; the version on trial flips every third row."""
    def label(rows, **kw):
        hand, flip = kw.get("on_chunk"), ft_name in str(kw.get("model"))

        def flipped(preds):  # before the chunk is handed over, as the engine decides labels
            for p in preds:
                if flip and p.index % 3 == 0 and not p.flags:
                    p.label = "Negative" if p.label == "Positive" else "Positive"
            if hand:
                hand(preds)
        return fake_label_rows(rows, **{**kw, "on_chunk": flipped})
    return label


def test_the_icm_job_labels_with_the_version_on_trial_and_flags_where_it_disagrees(make, tmp_path):
    ls = FakeLS(range(1, 31))
    app, backend = make(ls, chunk_size=10)
    v1 = fake_version(backend.config.model_dir, 1, False)
    backend.host._labeler = challenger_flips(v1)
    job = run_job(backend)
    assert job.status == "done", job.error
    t = job.state["trial"]
    assert t["challenger"] == v1 and t["done"] is True and len(t["labels"]) == 30 and t["compared"] == 30
    dis = {int(k): v for k, v in t["disagreements"].items()}
    assert dis and all(v[0] != v[1] for v in dis.values())
    assert f"version on trial {v1} disagrees on {len(dis)} of 30 tasks" in job.message
    rec = T.read_trial(backend.config.model_dir, v1, 1)
    assert rec.against == VERSION and rec.job == job.id and set(rec.disagreements) == set(dis)
    by_task = {p["task"]: p for p in ls.preds}
    for tid, p in by_task.items():
        reasons = [r["value"]["text"][0] for r in p["result"] if r["from_name"] == "review_reason"]
        if tid in dis:
            assert p["score"] <= 0.75 and any(f"version {v1}" in r for r in reasons)
        else:
            assert not any("on trial" in r for r in reasons)
    assert len(by_task) == 30  # one prediction per task, the serving version's


def test_no_trial_pass_when_switched_off(make):
    ls = FakeLS(range(1, 11))
    app, backend = make(ls, trial=False)
    v1 = fake_version(backend.config.model_dir, 1, False)
    backend.host._labeler = challenger_flips(v1)
    job = run_job(backend)
    assert job.status == "done" and "trial" not in job.state and "on trial" not in job.message


def test_the_versions_command_says_which_version_is_on_trial(tmp_path, capsys):
    from argparse import Namespace

    from icm_backend.commands.finetune import run_versions

    v1 = fake_version(tmp_path, 1, True)
    v2 = fake_version(tmp_path, 2, False)
    v3 = fake_version(tmp_path, 3, False)
    promote(tmp_path, v1)
    T.write_trial(tmp_path, T.TrialRecord(v3, v1, 4, {1: ("a", "b")}, 9))
    run_versions(Namespace(model_dir=tmp_path, pin=None))
    out = {line.lstrip("* ").split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert out[v1].startswith("*") and out[v1].endswith("gate=promoted")
    assert out[v2].endswith("gate=kept")  # superseded by a newer kept version: not on trial
    assert out[v3].endswith("gate=kept, on trial (project 4: 1 disagreements)")


@pytest.mark.parametrize("alpha, promoted", [(0.2, False), (0.5, True)])
def test_the_training_job_settles_a_trial_at_ICM_GATE_ALPHA(tmp_path, alpha, promoted):
    """The level reaches the trial through the training job (TrainJob._trial): 2 : 0 (p = 0.25) stays on
    trial at the default 0.2 and is promoted at 0.5."""
    from types import SimpleNamespace

    from icm_backend.finetune.job import TrainJob

    v1 = fake_version(tmp_path, 1, False)
    T.write_trial(tmp_path, T.TrialRecord(v1, "icm-smollm2-135m", 3, {10: ("Positive", "Negative"),
                                                                      11: ("Negative", "Positive")}, 40, 5))
    config = SimpleNamespace(model_dir=tmp_path, base_model="smollm2-135m", method="icm", model_version_pin=None,
                             max_iters=None)
    tasks = [{"id": t, "annotations": [{"id": t, "result": [{"from_name": "sentiment", "to_name": "text",
                                                             "type": "choices", "value": {"choices": [word]}}]}]}
             for t, word in ((10, "Positive"), (11, "Negative"))]
    said = TrainJob(SimpleNamespace(config=config))._trial(3, tasks, parse_label_config(CLASSIFY_XML), alpha)
    assert f"{'<=' if promoted else '>'} {alpha})" in said, said
    assert (current_name(tmp_path) == v1) is promoted
