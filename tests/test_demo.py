"""`icm-backend demo` prints for a person: the table alone on stdout (a time per method), no log lines
unless -v, and no library deprecation notice in the middle. The LM is the fake scorer (the real one is
`make demo`'s business), so this runs in seconds."""

from __future__ import annotations

import logging
import re
import warnings

import pytest

from fake_scorer import FakeScorer
from icm_backend.cli import main
from icm_backend.commands import demo

ROW = re.compile(r"^(zero-shot|random-fewshot|bootstrap|icm|gold-fewshot) +\d\.\d{3} +\d\.\d{3} +\d\.\d{2} +\d+s")


class FakeLM(FakeScorer):
    """The fake scorer with what the demo's header reads from a loaded model; it also calls the model the
    way transformers 5 complains about."""

    name, quantization, dtype, device = "fake-lm", "none", "bf16", "cpu"

    def score(self, prefix, targets):
        warnings.warn("`past_key_values` is deprecated and will be removed in version 5.40.0 for "
                      "`LlamaModel.forward`. Use `cache` instead.", FutureWarning)
        logging.getLogger("icm_backend.engine.scorer").info("scored %d targets", len(targets))
        return super().score(prefix, targets)


@pytest.fixture
def fake_demo(monkeypatch):
    # negative/positive cues so the fake prefers a class; the sample's sentences rarely hold them, so
    # the accuracies are whatever they are: this test checks the form, not the numbers
    monkeypatch.setattr(demo, "load_lm", lambda name, dtype="auto": FakeLM(demo.LABELS, {"negative": "bad", "positive": "good"}))
    root = logging.getLogger()
    level, hf = root.level, logging.getLogger("transformers.utils.generic")
    filters = list(hf.filters)
    yield
    root.setLevel(level)  # the demo sets process-wide logging; put it back for the other tests
    hf.filters[:] = filters


def test_demo_prints_the_table_alone_with_a_time_per_method(fake_demo, capsys, caplog, recwarn):
    caplog.set_level(logging.INFO)  # as `--log-level INFO` (the CLI's default) leaves it on a terminal
    assert main(["demo", "--seed", "0"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "SST-2 sample: 64 sentences, model fake-lm (bf16 on cpu), seed 0"
    rows = [l for l in lines if ROW.match(l)]
    assert [r.split()[0] for r in rows] == list(demo.METHODS)
    assert lines[lines.index(rows[0]) - 1].split() == ["method", "accuracy", "ECE", "positive", "time"]
    assert re.fullmatch(r"gold share of positive: 0\.\d\d", lines[-2]) and re.fullmatch(r"total \d+s", lines[-1])
    assert "scored" not in err + out  # no log line among the results
    # the engine's log is at WARNING without -v (under pytest the records go to caplog, not to stderr)
    assert logging.getLogger().level == logging.WARNING
    assert not [r for r in caplog.records if r.levelno < logging.WARNING and r.name.startswith("icm_backend")]
    assert not [w for w in recwarn if "past_key_values" in str(w.message)]


def test_demo_verbose_logs_the_engine(fake_demo, caplog):
    caplog.set_level(logging.INFO)
    assert main(["demo", "-v"]) == 0
    assert logging.getLogger().level == logging.INFO
    assert any(r.name == "icm_backend.engine.labeler" and r.levelno == logging.INFO for r in caplog.records)


def test_the_transformers_deprecation_line_is_filtered():
    demo.quiet_libraries(verbose=True)
    logger = logging.getLogger("transformers.utils.generic")
    try:
        record = logger.makeRecord(logger.name, logging.WARNING, __file__, 1,
                                   "`past_key_values`/`cache_params` are deprecated. Use `cache` instead.", (), None)
        other = logger.makeRecord(logger.name, logging.WARNING, __file__, 1, "something else", (), None)
        assert not logger.filter(record) and logger.filter(other)
    finally:
        logger.filters.clear()
