"""Scoring on a model server: vLLM, or any OpenAI-compatible server whose /v1/completions returns log-probs.

Same contract and same numbers as the in-process TransformersScorer:
- prompts are tokenised here, by the model's own tokenizer loaded locally, exactly as the local scorer
  does it ([BOS] + prefix + target, no chat template) and sent as token ids, so the server sees the
  very tokens the local model would;
- a label word is read at its first token after a space (set_labels is the local scorer's rule), and a
  row is the log-probs of those tokens at the cue, renormalised over the label set (a log-softmax over
  the label logits equals the full-vocabulary log-probs minus their logsumexp).

Two ways to get those log-probs, chosen per label set and logged:
- "top-k": every label word is one token: one request per batch of prompts asks for the top-k
  next-token log-probs at the cue (`logprobs: k`, `max_tokens: 1`). A row where a label token is
  missing from the top-k is rescored the second way (counted in stats.fallback_rows).
- "prompt-logprobs": some label word is several tokens: each prompt is sent once per label with the
  label's first token appended, and `prompt_logprobs` gives that token's exact log-prob.

Requests carry `batch_size` prompts each, at most `max_in_flight` at a time. Connection errors,
timeouts, 429 and 5xx are retried with exponential backoff for up to `retry_s` seconds; then, or at once
on any other error (unknown model, bad key, no log-probs), a ModelServerError says what went wrong in
one line. The API key is sent as a bearer token and never logged.
"""

from __future__ import annotations

import copy
import json
import logging
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.client import HTTPException
from typing import Callable

import numpy as np

from icm_backend.errors import InputError
from icm_backend.engine.tokens import encode, label_token_ids, with_bos

log = logging.getLogger(__name__)

RETRY_STATUS = (408, 409, 425, 429, 500, 502, 503, 504)
PROBE = "ICM tokenizer check: Hello, world! 123"


class ModelServerError(InputError):
    """The model server is unreachable, serves another model, rejects us, or returns no log-probs."""


@dataclass
class RemoteStats:
    forward_calls: int = 0  # HTTP requests that returned scores
    tokens_processed: int = 0  # prompt tokens sent (the server's prefix cache may skip some of them)
    prefix_cache_hits: int = 0  # not visible from here: read the server's metrics
    retries: int = 0
    topk_rows: int = 0
    fallback_rows: int = 0  # top-k rows missing a label token, rescored with prompt_logprobs
    prompt_logprob_rows: int = 0


def _load_tokenizer(tokenizer):
    if not isinstance(tokenizer, str):
        return tokenizer
    from transformers import AutoTokenizer

    from icm_backend.engine.model import resolve_model_dir

    _, where = resolve_model_dir(tokenizer)
    try:
        return AutoTokenizer.from_pretrained(str(where))
    except OSError as exc:
        raise InputError(f"--tokenizer {tokenizer}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from exc


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


class RemoteScorer:
    """Scorer over an OpenAI-compatible /v1/completions endpoint (see the module docstring)."""

    def __init__(self, base_url: str, model: str, *, tokenizer=None, api_key: str | None = None,
                 label_words: list[str] | None = None, batch_size: int = 32, max_in_flight: int = 4,
                 timeout_s: float = 120.0, retry_s: float = 120.0, backoff_s: float = 1.0,
                 max_backoff_s: float = 15.0, top_k: int = 20, mode: str = "auto", check: bool = True):
        """base_url: e.g. http://127.0.0.1:8000/v1. model: the served model name. tokenizer: a tokenizer
        object, or a name/path load_lm accepts (default: `model`). mode: auto, top-k or prompt-logprobs."""
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise InputError(f"--server {base_url!r}: expected a base URL like http://127.0.0.1:8000/v1")
        if not model:
            raise InputError("--model: name the model the server serves (with --server)")
        if mode not in ("auto", "top-k", "prompt-logprobs"):
            raise InputError(f"mode {mode!r}: choose auto, top-k or prompt-logprobs")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.model_id = f"remote:{model}"
        self._api_key = api_key
        self.batch_size = max(1, int(batch_size))
        self.max_in_flight = max(1, int(max_in_flight))
        self.timeout_s = timeout_s
        self.retry_s = retry_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.top_k = top_k
        self.requested_mode = mode
        self.mode = mode
        self.stats = RemoteStats()
        self._stats_lock = threading.Lock()
        self.tok = _load_tokenizer(tokenizer or model)
        self._context_window: int | None = None
        self.served_models: list[str] = []
        # Called as on_wait(message) before each retry: a job shows it as progress and may raise to stop
        # waiting (cancel, a request's time budget).
        self.on_wait: Callable[[str], None] | None = None
        self._shared = {"checked": False}  # one server check for this scorer and its forks
        if check:
            self.check_server()
        if label_words:
            self.set_labels(label_words)

    def __repr__(self) -> str:  # never shows the key
        return f"RemoteScorer({self.base_url!r}, {self.model!r})"

    def fork(self) -> "RemoteScorer":
        """A copy with its own label set and stats, the same server settings (one per job or request)."""
        new = copy.copy(self)
        new.stats, new._stats_lock = RemoteStats(), threading.Lock()
        return new

    # -- HTTP -------------------------------------------------------------------------------------
    def _root(self) -> str:
        return self.base_url[:-3] if self.base_url.endswith("/v1") else self.base_url

    def _request(self, method: str, url: str, body: dict | None = None, retry: bool = True):
        """JSON in, JSON out; retries connection errors / timeouts / 429 / 5xx with backoff."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        deadline = time.monotonic() + self.retry_s
        attempt = 0
        while True:
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as exc:
                detail = _short(exc.read().decode(errors="replace"))
                if exc.code not in RETRY_STATUS or not retry:
                    raise self._http_error(url, exc.code, detail) from None
                reason = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, HTTPException,
                    OSError) as exc:
                if not retry:
                    raise ModelServerError(f"model server {self.base_url}: unreachable ({_reason(exc)})") from None
                reason = _reason(exc)
            except json.JSONDecodeError:
                raise ModelServerError(f"model server {url}: the answer is not JSON (is this an "
                                       "OpenAI-compatible server?)") from None
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelServerError(f"model server {self.base_url}: gave up after {self.retry_s:.0f}s of retries "
                                       f"({attempt + 1} tries); last error: {reason}")
            wait = min(self.max_backoff_s, self.backoff_s * 2 ** attempt, left) * (0.75 + 0.5 * random.random())
            attempt += 1
            with self._stats_lock:
                self.stats.retries += 1
            log.warning("model server %s: %s; retry %d in %.1fs (giving up in %.0fs)", self.base_url, reason,
                        attempt, wait, left)
            if self.on_wait is not None:
                self.on_wait(f"waiting for the model server ({reason[:120]}); retry {attempt}, "
                             f"giving up in {left:.0f}s")
            time.sleep(max(0.05, wait))

    def _http_error(self, url: str, code: int, detail: str) -> ModelServerError:
        if code in (401, 403):
            return ModelServerError(f"model server {self.base_url}: HTTP {code}, the API key was refused "
                                    "(set ICM_SERVER_API_KEY or OPENAI_API_KEY)")
        if code == 404 and "model" in detail.lower():
            return ModelServerError(f"model server {self.base_url}: does not serve model {self.model!r} "
                                    f"(HTTP 404: {detail})")
        return ModelServerError(f"model server {url}: HTTP {code}: {detail}")

    def check_server(self) -> None:
        """The server is up, serves `model`, and tokenises as our tokenizer does (where it can say).
        Built with check=False, the first score() does this."""
        reply = self._request("GET", self.base_url + "/models")
        models = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(models, list):
            raise ModelServerError(f"model server {self.base_url}/models: no model list in the answer "
                                   "(is this an OpenAI-compatible server?)")
        self.served_models = [str(m.get("id")) for m in models if isinstance(m, dict)]
        entry = next((m for m in models if isinstance(m, dict) and m.get("id") == self.model), None)
        if entry is None:
            raise ModelServerError(f"model server {self.base_url} serves {', '.join(self.served_models) or 'no model'}"
                                   f", not {self.model!r}: pass that name as --model / ICM_MODEL")
        if isinstance(entry.get("max_model_len"), int):
            self._context_window = entry["max_model_len"]
        self._check_tokenizer()
        self._shared["checked"] = True

    @property
    def context_window(self) -> int | None:
        """The served model's max_model_len (None where the server does not say); asks the server once."""
        if not self._shared["checked"]:
            self.check_server()
        return self._context_window

    def _check_tokenizer(self) -> None:
        ours = self.tok.encode(PROBE, add_special_tokens=False)
        try:
            reply = self._request("POST", self._root() + "/tokenize",
                                  {"model": self.model, "prompt": PROBE, "add_special_tokens": False}, retry=False)
        except ModelServerError as exc:
            log.info("model server %s: no /tokenize (%s); tokenizer match not checked", self.base_url, exc)
            return
        theirs = reply.get("tokens") if isinstance(reply, dict) else None
        if isinstance(theirs, list) and theirs != ours:
            raise ModelServerError(f"model server {self.base_url}: model {self.model!r} tokenises differently from "
                                   "the local tokenizer; point --tokenizer / ICM_TOKENIZER at the served model's folder")

    def _completions(self, body: dict) -> list[dict]:
        reply = self._request("POST", self.base_url + "/completions", {"model": self.model, **body})
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or len(choices) != len(body["prompt"]):
            raise ModelServerError(f"model server {self.base_url}: /completions returned "
                                   f"{len(choices) if isinstance(choices, list) else 'no'} choices for "
                                   f"{len(body['prompt'])} prompts")
        with self._stats_lock:
            self.stats.forward_calls += 1
            usage = reply.get("usage") or {}
            self.stats.tokens_processed += int(usage.get("prompt_tokens") or sum(len(p) for p in body["prompt"]))
        return sorted(choices, key=lambda c: c.get("index", 0))

    # -- label words ------------------------------------------------------------------------------
    def set_labels(self, label_words: list[str]) -> None:
        self.label_ids = label_token_ids(self.tok, label_words)  # the local scorer's rule
        self.label_words = list(label_words)
        self.label_decoded = [self.tok.decode([i]) for i in self.label_ids]
        single = all(len(encode(self.tok, " " + w)) == 1 for w in label_words)
        mode = self.requested_mode
        if mode == "auto":
            mode = "top-k" if single else "prompt-logprobs"
        if mode != getattr(self, "_logged_mode", None) or label_words != getattr(self, "_logged_words", None):
            why = "every label word is one token" if single else "a label word is several tokens"
            log.info("remote scorer %s (%s): labels %s scored by %s (%s)", self.base_url, self.model,
                     ",".join(label_words), mode, why if self.requested_mode == "auto" else "requested")
            self._logged_mode, self._logged_words = mode, list(label_words)
        self.mode = mode

    def count_tokens(self, text: str) -> int:
        return len(encode(self.tok, text))

    # -- scoring ----------------------------------------------------------------------------------
    def encode(self, prefix: str, target: str) -> list[int]:
        """The token ids TransformersScorer feeds for (prefix, target): [BOS] + prefix + target."""
        return with_bos(self.tok, (encode(self.tok, prefix) if prefix else []) + encode(self.tok, target))

    def score(self, prefix: str, targets: list[str]) -> np.ndarray:
        if not targets:
            return np.zeros((0, len(self.label_words)))
        if not self._shared["checked"]:
            self.check_server()
        prompts = [self.encode(prefix, t) for t in targets]
        raw = np.full((len(prompts), len(self.label_words)), np.nan)
        batches = [list(range(s, min(s + self.batch_size, len(prompts)))) for s in range(0, len(prompts), self.batch_size)]
        fn = self._topk_batch if self.mode == "top-k" else self._prompt_logprob_batch
        self._run(fn, batches, prompts, raw)
        missing = [i for i in range(len(prompts)) if np.isnan(raw[i]).any()]
        if missing:
            with self._stats_lock:
                self.stats.fallback_rows += len(missing)
            log.info("remote scorer: %d of %d rows had a label outside the top-%d; rescoring them with "
                     "prompt_logprobs", len(missing), len(prompts), self.top_k)
            sub = [missing[s:s + self.batch_size] for s in range(0, len(missing), self.batch_size)]
            self._run(self._prompt_logprob_batch, sub, prompts, raw)
        return raw - np.logaddexp.reduce(raw, axis=1, keepdims=True)

    def _run(self, fn, batches, prompts, raw) -> None:
        if len(batches) == 1 or self.max_in_flight == 1:
            for b in batches:
                fn(b, prompts, raw)
            return
        with ThreadPoolExecutor(min(self.max_in_flight, len(batches))) as pool:
            for f in [pool.submit(fn, b, prompts, raw) for b in batches]:
                f.result()

    def _topk_batch(self, rows: list[int], prompts: list[list[int]], raw: np.ndarray) -> None:
        choices = self._completions({"prompt": [prompts[i] for i in rows], "max_tokens": 1, "temperature": 0,
                                     "logprobs": self.top_k, "return_tokens_as_token_ids": True})
        for i, ch in zip(rows, choices):
            top = ((ch.get("logprobs") or {}).get("top_logprobs") or [None])[0]
            if not isinstance(top, dict) or not top:
                raise ModelServerError(f"model server {self.base_url}: /completions returned no log-probs "
                                       "(choices[].logprobs.top_logprobs); ICM needs a server that returns "
                                       "next-token log-probs, such as vLLM")
            by_id = {}
            for key, lp in top.items():
                if isinstance(key, str) and key.startswith("token_id:"):
                    by_id[int(key[9:])] = lp
            for k, (tid, text) in enumerate(zip(self.label_ids, self.label_decoded)):
                lp = by_id.get(tid) if by_id else top.get(text)  # servers without token ids: decoded text
                if lp is not None:
                    raw[i, k] = float(lp)
        with self._stats_lock:
            self.stats.topk_rows += len(rows)

    def _prompt_logprob_batch(self, rows: list[int], prompts: list[list[int]], raw: np.ndarray) -> None:
        n_labels = len(self.label_ids)
        batch = [prompts[i] + [tid] for i in rows for tid in self.label_ids]
        choices = self._completions({"prompt": batch, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0})
        for n, ch in enumerate(choices):
            i, k = rows[n // n_labels], n % n_labels
            plp = ch.get("prompt_logprobs")
            entry = plp[-1] if isinstance(plp, list) and plp else None
            tid = self.label_ids[k]
            item = entry.get(str(tid)) if isinstance(entry, dict) else None
            if item is None and isinstance(entry, dict):
                item = entry.get(tid)
            lp = item.get("logprob") if isinstance(item, dict) else item
            if lp is None:
                raise ModelServerError(f"model server {self.base_url}: /completions returned no prompt log-probs "
                                       f"(choices[].prompt_logprobs) for label {self.label_words[k]!r}; this server "
                                       "cannot score labels outside its top-k or multi-token labels (vLLM can)")
            raw[i, k] = float(lp)
        with self._stats_lock:
            self.stats.prompt_logprob_rows += len(rows)


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "reason", None)
    return _short(f"{type(exc).__name__}: {inner if inner is not None else exc}", 200)


def server_metrics(base_url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """The server's Prometheus counters (vLLM: /metrics at the server root), summed over labels."""
    root = base_url.rstrip("/")
    root = root[:-3] if root.endswith("/v1") else root
    with urllib.request.urlopen(root + "/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out
