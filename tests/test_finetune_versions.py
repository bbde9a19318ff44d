"""Versions on disk: atomic writes, CURRENT switching, pins (rollback), and the server's view of them."""

from __future__ import annotations

import pytest

from icm_backend.errors import InputError
from icm_backend import versions as V


def fake_version(model_dir, name=None):
    with V.VersionWriter(model_dir, name) as w:
        (w.tmp / "adapter_config.json").write_text("{}")
        w.write_json("metrics.json", {"created_at": "t", "heldout_best": {"accuracy": 0.9}})
    return w.name


def test_failed_write_leaves_nothing_and_serving_untouched(tmp_path):
    first = fake_version(tmp_path)
    V.promote(tmp_path, first)
    with pytest.raises(RuntimeError):
        with V.VersionWriter(tmp_path) as w:
            (w.tmp / "adapter_config.json").write_text("{}")
            raise RuntimeError("trainer crashed")
    assert [v.name for v in V.list_versions(tmp_path)] == [first]
    assert not list((tmp_path / "versions").glob(".tmp-*"))
    assert V.served_version_name(tmp_path, "m") == first  # what the server tells LS


def test_names_increase_and_killed_tmp_dirs_are_ignored(tmp_path):
    a = fake_version(tmp_path)
    (tmp_path / "versions" / f".tmp-ft0002-20260101T000000-999").mkdir()  # a killed training
    b = V.new_version_name(tmp_path)
    assert a.startswith("ft0001-") and b.startswith("ft0003-")
    assert [v.name for v in V.list_versions(tmp_path)] == [a]
    assert V.versions_payload(tmp_path, "m")["versions"] == ["icm-m", a]  # dot-dirs are invisible to /versions
    assert V.sweep_stale_tmp(tmp_path, older_than_s=0) == 1


def test_promote_pin_and_rollback(tmp_path):
    a = fake_version(tmp_path)
    b = fake_version(tmp_path)
    V.promote(tmp_path, b)
    assert V.serving_version(tmp_path).name == b
    V.promote(tmp_path, a)  # rollback on disk: the server serves `a` from the next /setup on
    assert V.served_version_name(tmp_path, "m") == a
    assert V.serving_version(tmp_path, V.pinned_version(None, b)).name == b  # configured pin (ICM_MODEL_VERSION)
    assert V.serving_version(tmp_path, V.pinned_version({"model_version": a}, b)).name == a  # LS extra param wins
    assert V.serving_version(tmp_path, "base") is None
    assert V.served_version_name(tmp_path, "m", "icm-m") == "icm-m"  # pinning the base by its version name
    with pytest.raises(InputError, match="no such version"):
        V.serving_version(tmp_path, "ft9999-nope")
    with pytest.raises(InputError, match="not found"):
        V.promote(tmp_path, "ft9999-nope")
    V.promote(tmp_path, "base")
    assert V.current_name(tmp_path) is None
