"""Unit tests of the remote scorer against a small fake OpenAI-compatible server (real HTTP, fake model).

The real engine (vLLM) is tested in test_remote_vllm.py; these cover the protocol, the two scoring
modes, batching, retries and every error message, in a few seconds.
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
    s = scorer_for(fake, top_k=512, batch_size=32, label_words=LABELS)
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


def test_labels_outside_topk_fall_back_to_prompt_logprobs(fake):
    s = scorer_for(fake, top_k=3, label_words=LABELS)
    rows = s.score("", TEXTS[:20])
    np.testing.assert_allclose(rows, expected(s, "", TEXTS[:20]), atol=1e-9)
    assert s.stats.fallback_rows > 0
    assert any(r.get("prompt_logprobs") == 0 for r in fake.requests)


def test_multi_token_labels_use_prompt_logprobs(fake, caplog):
    with caplog.at_level(logging.INFO, logger="icm_backend.engine.remote"):
        s = scorer_for(fake, label_words=["terrible", "wonderful"])
    assert s.mode == "prompt-logprobs"
    assert "prompt-logprobs (a label word is several tokens)" in caplog.text
    rows = s.score("ctx one.\n\n", TEXTS[:5])
    np.testing.assert_allclose(rows, expected(s, "ctx one.\n\n", TEXTS[:5]), atol=1e-9)
    assert all("logprobs" not in r for r in fake.requests)


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
    s = scorer_for(fake, top_k=512, label_words=LABELS)
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
