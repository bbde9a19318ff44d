"""Unit tests of the remote scorer against a small fake OpenAI-compatible server (real HTTP, fake model).

The real engine (vLLM) is tested in test_remote_vllm.py; these cover the protocol, the detection of
the ways a server reads label log-probs, the scoring modes, batching, timeouts, retries and every error
message, in a few seconds.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fake_openai_server import FakeOpenAI, WordTokenizer, next_token_logprobs
from icm_backend.engine.labeler import label_rows
from icm_backend.engine.remote import ModelServerError, RemoteScorer
from icm_backend.errors import InputError

LABELS = ["bad", "good"]
TEXTS = [f"Review {i}: the film was {'fine' if i % 2 else 'dull'} and long {i % 5}.\nSentiment:" for i in range(70)]


@pytest.fixture
def fake():
    server = FakeOpenAI(tokenize_as=WordTokenizer()).start()
    yield server
    server.stop()


def scorer_for(fake, **kw) -> RemoteScorer:
    kw.setdefault("tokenizer", fake.tokenize_as or WordTokenizer())
    kw.setdefault("retry_s", 5)
    kw.setdefault("backoff_s", 0.05)
    return RemoteScorer(fake.base_url, fake.model, **kw)


def expected(scorer: RemoteScorer, prefix: str, targets: list[str]) -> np.ndarray:
    rows = np.array([next_token_logprobs(scorer.encode(prefix, t))[scorer.label_ids] for t in targets])
    return rows - np.logaddexp.reduce(rows, axis=1, keepdims=True)


def test_topk_rows_match_the_model_and_batch_requests(fake):
    s = scorer_for(fake, top_k=512, batch_size=32, label_words=LABELS, mode="top-k")
    assert s.mode == "top-k"
    prefix = "Review x: great.\nSentiment: good\n\n"
    rows = s.score(prefix, TEXTS)
    np.testing.assert_allclose(rows, expected(s, prefix, TEXTS), atol=1e-9)
    # three requests, sent concurrently (up to max_in_flight), so in any order
    assert len(fake.requests) == 3 and sorted(len(r["prompt"]) for r in fake.requests) == [6, 32, 32]
    assert all(r["logprobs"] == 512 and r["max_tokens"] == 1 for r in fake.requests)
    # the exact token ids of the local scorer: [BOS] + prefix + target
    tok = s.tok
    first = [tok.bos_token_id] + tok.encode(prefix) + tok.encode(TEXTS[0])
    assert any(r["prompt"][0] == first for r in fake.requests)
    assert s.stats.forward_calls == 3 and s.stats.fallback_rows == 0
    assert s.stats.tokens_processed == sum(len(s.encode(prefix, t)) for t in TEXTS)


def test_labels_outside_topk_fall_back_to_prompt_logprobs(fake, caplog):
    """A server with neither exact way (raw logprobs mode, no logprob_token_ids): top-k, then the fallback
    in small requests (fallback_batch sequences = rows x labels), with progress in the log."""
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.remote"):
        s = scorer_for(fake, top_k=3, label_words=LABELS, fallback_batch=8, progress_every=5)
        rows = s.score("", TEXTS[:40])
    np.testing.assert_allclose(rows, expected(s, "", TEXTS[:40]), atol=1e-9)
    assert s.mode == "top-k" and s.stats.fallback_rows > 5 and s.stats.exact_rows == 0
    fallback = [r for r in fake.requests if r.get("prompt_logprobs") == 0 and len(r["prompt"][0]) > 12]
    assert fallback and max(len(r["prompt"]) for r in fallback) == 8  # 4 rows x 2 labels a request
    assert sum(len(r["prompt"]) for r in fallback) == 2 * s.stats.fallback_rows
    assert f"prompt_logprobs {s.stats.fallback_rows}/{s.stats.fallback_rows} rows" in caplog.text
    assert "label log-probs by top-k only" in caplog.text


def test_multi_token_labels_use_prompt_logprobs(fake, caplog):
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.remote"):
        s = scorer_for(fake, label_words=["terrible", "wonderful"])
        assert "scored by" not in caplog.text  # nothing logged before the server's ways are known
        rows = s.score("ctx one.\n\n", TEXTS[:5])
    assert s.mode == "prompt-logprobs"
    assert caplog.text.count("scored by prompt-logprobs (a label word is several tokens)") == 1
    np.testing.assert_allclose(rows, expected(s, "ctx one.\n\n", TEXTS[:5]), atol=1e-9)
    scoring = [r for r in fake.requests if len(r["prompt"][0]) > 12]  # not the detection probes
    assert scoring and all("logprobs" not in r for r in scoring)


def test_decoded_text_keys_when_server_ignores_token_ids(fake):
    fake.token_id_keys = False
    s = scorer_for(fake, top_k=512, label_words=LABELS)
    np.testing.assert_allclose(s.score("", TEXTS[:8]), expected(s, "", TEXTS[:8]), atol=1e-9)


def test_server_without_logprobs_is_a_clear_error(fake):
    fake.no_logprobs = True
    s = scorer_for(fake, label_words=LABELS)
    with pytest.raises(ModelServerError, match="returned no log-probs"):
        s.score("", TEXTS[:3])


def test_label_outside_topk_without_prompt_logprobs_is_a_clear_error(fake):
    fake.no_prompt_logprobs = True
    s = scorer_for(fake, top_k=1, label_words=LABELS)
    with pytest.raises(ModelServerError, match="no prompt log-probs"):
        s.score("", TEXTS[:10])


def test_other_model_served_is_a_clear_error(fake):
    with pytest.raises(ModelServerError, match="serves fake-lm, not 'llama-70b'"):
        RemoteScorer(fake.base_url, "llama-70b", tokenizer=WordTokenizer(), retry_s=1)


def test_tokenizer_mismatch_is_caught(fake):
    class Other(WordTokenizer):
        def encode(self, text, add_special_tokens=False):
            return [3] + super().encode(text)

    with pytest.raises(ModelServerError, match="tokenises differently"):
        scorer_for(fake, tokenizer=Other())


def test_503_is_retried_with_backoff(fake):
    s = scorer_for(fake, top_k=512, label_words=LABELS, mode="top-k")
    fake.fail_next = 2
    rows = s.score("", TEXTS[:4])
    np.testing.assert_allclose(rows, expected(s, "", TEXTS[:4]), atol=1e-9)
    assert s.stats.retries == 2


def test_unreachable_server_gives_up_with_the_reason(fake):
    url = fake.base_url
    fake.stop()
    with pytest.raises(ModelServerError, match=r"gave up after 1s of retries .*last error: .*(refused|Connection)"):
        RemoteScorer(url, "fake-lm", tokenizer=WordTokenizer(), retry_s=1, backoff_s=0.1)


def test_api_key_is_sent_and_never_logged(fake, caplog):
    key = "sk-secret-123456"
    with caplog.at_level(logging.DEBUG):
        s = scorer_for(fake, api_key=key, label_words=LABELS)
        fake.fail_next = 1
        s.score("", TEXTS[:2])
    assert fake.auth_headers and all(h == f"Bearer {key}" for h in fake.auth_headers)
    assert key not in caplog.text and key not in repr(s)


def test_bad_url_and_missing_model_name():
    with pytest.raises(InputError, match="--server"):
        RemoteScorer("localhost:8000", "m", tokenizer=WordTokenizer(), check=False)
    with pytest.raises(InputError, match="--model"):
        RemoteScorer("http://localhost:8000/v1", "", tokenizer=WordTokenizer(), check=False)


def test_label_rows_take_a_remote_scorer(fake):
    s = scorer_for(fake, top_k=512)
    rows = [{"text": f"the film was {'fine' if i % 2 else 'dull'} {i}"} for i in range(12)]
    for method in ("zero-shot", "icm"):
        preds = label_rows(rows, task="classify", labels=["negative", "positive"], method=method, model=s, seed=0)
        assert len(preds) == 12 and {p.label for p in preds} <= {"negative", "positive"}
    assert s.model_id == "remote:fake-lm" and s.stats.forward_calls > 1


# -- which way a server reads label log-probs, detected once -------------------------------------------
def probes(fake) -> list[dict]:
    """The detection's requests: the probe prompt (PROBE), not a row's."""
    probe = scorer_probe_len(fake)
    return [r for r in fake.requests if len(r["prompt"][0]) <= probe]


def scorer_probe_len(fake) -> int:
    from icm_backend.engine.remote import PROBE

    tok = fake.tokenize_as or WordTokenizer()
    return 2 + len(tok.encode(PROBE))  # BOS + probe (+ a label token for prompt_logprobs)


def test_vllm_logprob_token_ids_are_detected_once_and_read_labels_at_any_rank(fake, caplog):
    fake.logprob_token_ids = True
    fake.max_logprobs = 20
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.remote"):
        s = scorer_for(fake, top_k=3, label_words=LABELS)
        rows = s.score("", TEXTS[:40])
    np.testing.assert_allclose(rows, expected(s, "", TEXTS[:40]), atol=1e-9)
    assert s.mode == "logprob-token-ids"
    assert s.stats.fallback_rows == 0 and s.stats.exact_rows == 40 and s.stats.topk_rows == 0
    assert "label log-probs by logprob-token-ids, allowed-token-ids" not in caplog.text  # raw mode: not both
    assert "label log-probs by logprob-token-ids (checked against prompt_logprobs)" in caplog.text
    scoring = [r for r in fake.requests if r not in probes(fake)]
    assert scoring and all(r["logprob_token_ids"] == s.label_ids and r["logprobs"] == 2 for r in scoring)
    n_probes = len(probes(fake))
    # a fork (a job) and another label set reuse the detection: no new probe
    f = s.fork()
    f.set_labels(["dull", "fine", "long"])
    np.testing.assert_allclose(f.score("ctx.\n\n", TEXTS[:5]), expected(f, "ctx.\n\n", TEXTS[:5]), atol=1e-9)
    assert f.mode == "logprob-token-ids" and len(probes(fake)) == n_probes


def test_processed_logprobs_server_is_read_by_allowed_token_ids(fake, caplog):
    fake.logprobs_mode = "processed"
    fake.max_logprobs = 20
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.remote"):
        s = scorer_for(fake, top_k=3, label_words=LABELS)
        rows = s.score("", TEXTS[:20])
    np.testing.assert_allclose(rows, expected(s, "", TEXTS[:20]), atol=1e-9)
    assert s.mode == "allowed-token-ids" and s.stats.fallback_rows == 0 and s.stats.exact_rows == 20
    assert "logprob-token-ids: the answer lacks label tokens" in caplog.text  # field ignored: plain top-k
    scoring = [r for r in fake.requests if r not in probes(fake)]
    assert all(r["allowed_token_ids"] == s.label_ids and r["logprobs"] == 2 for r in scoring)


def test_raw_logprobs_server_ignores_allowed_token_ids_so_it_is_not_used(fake, caplog):
    """vLLM's default mode takes the log-probs before the allowed_token_ids mask: the answer is the plain
    top-k of the vocabulary, which must not be mistaken for label log-probs."""
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.remote"):
        s = scorer_for(fake, top_k=512, label_words=LABELS)
        s.score("", TEXTS[:4])
    assert s.mode == "top-k"
    assert "allowed-token-ids: log-probs not normalised over the allowed tokens" in caplog.text
    assert "--logprobs-mode processed_logprobs" in caplog.text


def test_exact_way_rows_that_break_its_promise_are_rescored(fake):
    """A server that passed the probe but answers a row without every label token: that row goes to
    prompt_logprobs, not into the labels with a made-up number."""
    fake.logprob_token_ids = True
    s = scorer_for(fake, top_k=3, label_words=LABELS)
    s.score("", TEXTS[:2])  # detection
    fake.logprob_token_ids = False  # from now on: plain top-3, labels mostly missing
    rows = s.score("", TEXTS[:20])
    np.testing.assert_allclose(rows, expected(s, "", TEXTS[:20]), atol=1e-9)
    assert s.stats.fallback_rows > 0 and s.stats.exact_rows < 22


def test_requested_mode_skips_detection(fake):
    fake.logprob_token_ids = True
    s = scorer_for(fake, top_k=512, label_words=LABELS, mode="prompt-logprobs")
    np.testing.assert_allclose(s.score("", TEXTS[:3]), expected(s, "", TEXTS[:3]), atol=1e-9)
    assert s.mode == "prompt-logprobs" and not any("logprob_token_ids" in r for r in fake.requests)


# -- the prompt_logprobs fallback: small requests, timeouts that grow with them, split on timeout -----
def test_fallback_request_that_times_out_is_split_not_resent(fake, caplog):
    fake.seconds_per_prompt_logprob_seq = 0.15  # 8 sequences: 1.2 s; 2 sequences: 0.3 s
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.remote"):
        s = scorer_for(fake, mode="prompt-logprobs", label_words=LABELS, fallback_batch=8, timeout_s=0.7,
                       timeout_per_token_s=0.0, max_in_flight=1)
        rows = s.score("", TEXTS[:8])
    np.testing.assert_allclose(rows, expected(s, "", TEXTS[:8]), atol=1e-9)
    assert s.stats.split_requests == 2 and s.stats.retries == 0  # each 4-row request split into 2 x 2 rows
    assert "prompt_logprobs request of 4 rows: no answer in 0.7s; splitting it in two" in caplog.text


def test_fallback_timeout_grows_with_the_request(fake):
    """The same slow server, with a timeout per prompt token: the 4-row requests finish, nothing is split."""
    fake.seconds_per_prompt_logprob_seq = 0.15
    s = scorer_for(fake, mode="prompt-logprobs", label_words=LABELS, fallback_batch=8, timeout_s=0.7,
                   timeout_per_token_s=0.01, max_in_flight=1)
    rows = s.score("", TEXTS[:8])
    np.testing.assert_allclose(rows, expected(s, "", TEXTS[:8]), atol=1e-9)
    assert s.stats.split_requests == 0 and s.stats.forward_calls == 2


def test_a_slow_first_try_does_not_use_up_the_retry_budget(fake):
    """retry_s counts from the first failure: a one-row request that timed out is tried again even when
    the retry window is shorter than the timeout (counted from the start, there would be one try)."""
    fake.seconds_per_prompt_logprob_seq = 0.6  # 2 sequences: 1.2 s, past the 0.5 s timeout every time
    s = scorer_for(fake, mode="prompt-logprobs", label_words=LABELS, timeout_s=0.5, timeout_per_token_s=0.0,
                   retry_s=0.4, backoff_s=0.05)
    with pytest.raises(ModelServerError, match=r"gave up after 0.4s of retries \(2 tries\); last error: .*timed "
                                               r"out after 0.5s"):
        s.score("", TEXTS[:1])
    assert s.stats.retries == 1


def test_a_server_that_refuses_the_parameters_is_read_by_top_k(fake, caplog):
    """A strict server answers unknown fields with HTTP 400: noted in the log, not an error."""
    fake.max_logprobs = 1  # logprobs=2 (the label count) is refused, as vLLM refuses logprobs > --max-logprobs
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.remote"):
        s = scorer_for(fake, top_k=1, label_words=LABELS)
        rows = s.score("", TEXTS[:6])
    np.testing.assert_allclose(rows, expected(s, "", TEXTS[:6]), atol=1e-9)
    assert s.mode == "top-k" and "logprob-token-ids: HTTP 400; allowed-token-ids: HTTP 400" in caplog.text


def test_overload_during_detection_is_retried_not_taken_for_an_answer(fake):
    fake.logprob_token_ids = True
    s = scorer_for(fake, top_k=3, label_words=LABELS)
    fake.fail_next = 2  # the detection's first request (the prompt_logprobs reference) sees 503 twice
    np.testing.assert_allclose(s.score("", TEXTS[:4]), expected(s, "", TEXTS[:4]), atol=1e-9)
    assert s.mode == "logprob-token-ids" and s.stats.retries == 2


def test_fork_labelled_before_the_detection_uses_its_result(fake):
    """A job forks the scorer and sets its labels before any row was scored: when another fork's first
    batch detects the server's ways, this fork switches to the exact one too."""
    fake.logprob_token_ids = True
    s = scorer_for(fake, top_k=3)
    a, b = s.fork(), s.fork()
    a.set_labels(LABELS)
    b.set_labels(["dull", "fine", "long"])
    assert a.mode == b.mode == "top-k"  # not yet detected
    a.score("", TEXTS[:2])
    np.testing.assert_allclose(b.score("", TEXTS[:6]), expected(b, "", TEXTS[:6]), atol=1e-9)
    assert a.mode == b.mode == "logprob-token-ids" and b.stats.fallback_rows == 0


def test_a_long_label_set_does_not_hide_a_way(fake):
    """The probe asks about 8 labels at most: a 30-label set (over --max-logprobs) is read by
    logprob_token_ids, while allowed-token-ids (logprobs = 30 > 20) is not chosen for it."""
    fake.logprob_token_ids, fake.logprobs_mode, fake.max_logprobs = True, "processed", 20
    words = [f"w{i}" for i in range(30)]
    s = scorer_for(fake, top_k=20, label_words=words)
    np.testing.assert_allclose(s.score("", TEXTS[:3]), expected(s, "", TEXTS[:3]), atol=1e-9)
    assert s._shared["ways"] == ["logprob-token-ids", "allowed-token-ids"] and s.mode == "logprob-token-ids"
    s.requested_mode = "auto"
    s._shared["ways"] = ["allowed-token-ids"]  # a server with only the processed mode
    s.set_labels(words)
    assert s.mode == "top-k"
