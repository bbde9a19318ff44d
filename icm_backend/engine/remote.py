"""Scoring on a model server: vLLM, or any OpenAI-compatible server whose /v1/completions returns log-probs.

Same contract and same numbers as the in-process TransformersScorer:
- prompts are tokenised here, by the model's own tokenizer loaded locally, exactly as the local scorer
  does it ([BOS] + prefix + target, no chat template) and sent as token ids, so the server sees the
  very tokens the local model would;
- a label word is read at its first token after a space (set_labels is the local scorer's rule), and a
  row is the log-probs of those tokens at the cue, renormalised over the label set (a log-softmax over
  the label logits equals the full-vocabulary log-probs minus their logsumexp).

Four ways to get those log-probs; which ones the server honours is found out once per server (on the
first batch, with a probe prompt, checked against prompt_logprobs where the server gives them) and logged,
and each label set uses the cheapest exact one:
- "logprob-token-ids" (vLLM 0.32+, no server flag): `logprob_token_ids` = the label tokens returns exactly
  their full-vocabulary log-probs at the cue, whatever their rank;
- "allowed-token-ids" (vLLM started with `--logprobs-mode processed_logprobs`): `allowed_token_ids` = the
  label tokens and `logprobs` = their number returns their log-probs renormalised over that set (in the
  default raw mode the mask is applied after the log-probs are taken, so this reads the plain top-k);
- "top-k": every label word is one token: the top-k next-token log-probs at the cue (`logprobs: k`); a row
  whose label token is missing from the top-k is rescored the fourth way (stats.fallback_rows);
- "prompt-logprobs": each prompt is sent once per label with the label's first token appended, and
  `prompt_logprobs` gives that token's exact log-prob. It is the expensive way (the server takes a
  log-softmax over the whole vocabulary at every prompt position: 262k entries for Gemma 3), so it runs
  in small requests (`fallback_batch` sequences) whose timeout grows with their tokens; a request that
  still times out is split in two; progress is logged every `progress_every` rows.
A row an exact way answers without every label token (or, for allowed-token-ids, not normalised over the
label set) is rescored with prompt_logprobs too, so a server that half-honours a parameter costs time,
never wrong numbers.

Requests carry `batch_size` prompts each, at most `max_in_flight` at a time. Connection errors,
timeouts, 429 and 5xx are retried with exponential backoff for up to `retry_s` seconds after the first
failure; then, or at once
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
EXACT_WAYS = ("logprob-token-ids", "allowed-token-ids")  # cheapest first
MODES = ("auto", *EXACT_WAYS, "top-k", "prompt-logprobs")
MAX_LOGPROB_TOKEN_IDS = 128  # vLLM's bound on the length of logprob_token_ids
# An exact way's normalised row must match prompt_logprobs' to this much at detection: a parameter the
# server ignores moves it by whole nats, while batch shape and dtype move it by < 0.01 (fp32) / ~0.05 (bf16).
VERIFY_TOL = 0.1
NORMALISED_TOL = 1e-3  # allowed-token-ids: logsumexp of the label log-probs must be 0 (float32 softmax)


class ModelServerError(InputError):
    """The model server is unreachable, serves another model, rejects us, or returns no log-probs."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status  # the HTTP status where the server answered with an error


class _RequestTimedOut(Exception):
    """A request ran past its timeout and the caller would rather split it than resend it."""


@dataclass
class RemoteStats:
    forward_calls: int = 0  # HTTP requests that returned scores
    tokens_processed: int = 0  # prompt tokens sent (the server's prefix cache may skip some of them)
    prefix_cache_hits: int = 0  # not visible from here: read the server's metrics
    retries: int = 0
    topk_rows: int = 0
    exact_rows: int = 0  # rows read by logprob-token-ids or allowed-token-ids
    fallback_rows: int = 0  # rows missing a label token in top-k / an exact way, rescored with prompt_logprobs
    prompt_logprob_rows: int = 0
    split_requests: int = 0  # prompt_logprobs requests that timed out and were split in two


def _load_tokenizer(tokenizer, model: str, served_root: Callable[[], str | None]):
    """The tokenizer object for `tokenizer` (an object, or a name/dir load_lm accepts). Where it was not
    given and the served name is not a local model, the path the server says it loaded (vLLM's /v1/models
    "root") is tried, as it may be a hub id in the local cache or a folder this machine shares."""
    if not isinstance(tokenizer, str):
        return tokenizer
    from transformers import AutoTokenizer

    from icm_backend.engine.model import DEFAULT_MODEL, SMALL_TEST_MODEL, resolve_model_dir

    def load(name: str):
        _, where = resolve_model_dir(name)
        try:
            return AutoTokenizer.from_pretrained(str(where))
        except OSError as exc:
            raise InputError(f"--tokenizer {name}: cannot load a tokenizer ({str(exc).splitlines()[0]})") from exc

    try:
        return load(tokenizer)
    except InputError as exc:
        if tokenizer != model:  # given explicitly: say which option is wrong
            raise InputError(f"--tokenizer {tokenizer}: {str(exc).split(': ', 1)[-1]}") from None
        first = exc
    root = served_root()
    if root and root != model:
        try:
            tok = load(root)
            log.info("model server: tokenizer of %r loaded from %s, the path the server says it serves", model, root)
            return tok
        except InputError:
            pass
    raise InputError(
        f"--model {model}: the served name is not a model this machine has ({str(first).split(': ', 1)[-1]}); "
        f"the scorer tokenises here, so pass the served model's tokenizer with --tokenizer NAME_OR_DIR "
        f"(env ICM_TOKENIZER): a local Hugging Face folder, a hub id in the local cache, or {DEFAULT_MODEL} / "
        f"{SMALL_TEST_MODEL}; the server does not send its tokenizer"
        + (f" (its /v1/models names {root!r}, not loadable here)" if root else "")) from None


def _short(text: str, n: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "..."


def _is_timeout(exc: BaseException) -> bool:
    inner = getattr(exc, "reason", exc)
    return isinstance(inner, (socket.timeout, TimeoutError)) or "timed out" in str(inner)


class RemoteScorer:
    """Scorer over an OpenAI-compatible /v1/completions endpoint (see the module docstring)."""

    def __init__(self, base_url: str, model: str, *, tokenizer=None, api_key: str | None = None,
                 label_words: list[str] | None = None, batch_size: int = 32, max_in_flight: int = 4,
                 timeout_s: float = 120.0, retry_s: float = 120.0, backoff_s: float = 1.0,
                 max_backoff_s: float = 15.0, top_k: int = 20, mode: str = "auto", check: bool = True,
                 fallback_batch: int = 8, timeout_per_token_s: float = 0.05, progress_every: int = 16):
        """base_url: e.g. http://127.0.0.1:8000/v1. model: the served model name. tokenizer: a tokenizer
        object, or a name/path load_lm accepts (default: `model`). mode: auto or one of the ways (module
        docstring). fallback_batch: sequences (rows x labels) per prompt_logprobs request.
        timeout_per_token_s: a request's timeout is timeout_s plus this per prompt token it carries."""
        if not base_url or not base_url.startswith(("http://", "https://")):
            raise InputError(f"--server {base_url!r}: expected a base URL like http://127.0.0.1:8000/v1")
        if not model:
            raise InputError("--model: name the model the server serves (with --server)")
        if mode not in MODES:
            raise InputError(f"mode {mode!r}: choose one of {', '.join(MODES)}")
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
        self.fallback_batch = max(1, int(fallback_batch))
        self.timeout_per_token_s = timeout_per_token_s
        self.progress_every = max(1, int(progress_every))
        self.requested_mode = mode
        self.mode = mode
        self.stats = RemoteStats()
        self._stats_lock = threading.Lock()
        self._context_window: int | None = None
        self.served_models: list[str] = []
        # Called as on_wait(message) before each retry: a job shows it as progress and may raise to stop
        # waiting (cancel, a request's time budget).
        self.on_wait: Callable[[str], None] | None = None
        # One server check and one detection of the ways for this scorer and its forks.
        self._shared: dict = {"checked": False, "ways": None, "lock": threading.Lock()}
        self.tok = _load_tokenizer(tokenizer or model, model, self._root_for_tokenizer if check else lambda: None)
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

    def _request(self, method: str, url: str, body: dict | None = None, retry: bool = True,
                 timeout_s: float | None = None, split_on_timeout: bool = False):
        """JSON in, JSON out; retries connection errors / timeouts / 429 / 5xx with backoff, for retry_s
        seconds after the first failure (a slow first try must not use up the whole budget).
        split_on_timeout: a timeout raises _RequestTimedOut at once (resending the same request would
        time out again; the caller splits it)."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        timeout_s = timeout_s or self.timeout_s
        deadline = None
        attempt = 0
        while True:
            req = urllib.request.Request(url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                    return json.loads(resp.read().decode())
            except urllib.error.HTTPError as exc:
                detail = _short(exc.read().decode(errors="replace"))
                if exc.code not in RETRY_STATUS or not retry:
                    raise self._http_error(url, exc.code, detail) from None
                reason = f"HTTP {exc.code}: {detail}"
            except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, HTTPException,
                    OSError) as exc:
                if split_on_timeout and _is_timeout(exc):
                    raise _RequestTimedOut(f"no answer in {timeout_s:.3g}s") from None
                if not retry:
                    raise ModelServerError(f"model server {self.base_url}: unreachable ({_reason(exc)})") from None
                reason = _reason(exc) + (f" after {timeout_s:.3g}s" if _is_timeout(exc) else "")
            except json.JSONDecodeError:
                raise ModelServerError(f"model server {url}: the answer is not JSON (is this an "
                                       "OpenAI-compatible server?)") from None
            if deadline is None:
                deadline = time.monotonic() + self.retry_s
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelServerError(f"model server {self.base_url}: gave up after {self.retry_s:g}s of retries "
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
                                    "(set ICM_SERVER_API_KEY or OPENAI_API_KEY)", code)
        if code == 404 and "model" in detail.lower():
            return ModelServerError(f"model server {self.base_url}: does not serve model {self.model!r} "
                                    f"(HTTP 404: {detail})", code)
        return ModelServerError(f"model server {url}: HTTP {code}: {detail}", code)

    def _models(self) -> list:
        reply = self._request("GET", self.base_url + "/models")
        models = reply.get("data") if isinstance(reply, dict) else None
        if not isinstance(models, list):
            raise ModelServerError(f"model server {self.base_url}/models: no model list in the answer "
                                   "(is this an OpenAI-compatible server?)")
        return models

    def _root_for_tokenizer(self) -> str | None:
        """What the server says the served model is loaded from (vLLM: /v1/models "root"), if anything."""
        entry = next((m for m in self._models() if isinstance(m, dict) and m.get("id") == self.model), None)
        root = entry.get("root") if isinstance(entry, dict) else None
        return str(root) if root else None

    def check_server(self) -> None:
        """The server is up, serves `model`, and tokenises as our tokenizer does (where it can say).
        Built with check=False, the first score() does this."""
        models = self._models()
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

    def _timeout_for(self, prompts: list[list[int]]) -> float:
        """A request's timeout grows with the tokens it carries, times the requests in flight with it (the
        server batches them together): a fixed one either waits too long on small requests or cuts off big
        prompt_logprobs requests that a slow server is still working on."""
        return self.timeout_s + self.timeout_per_token_s * self.max_in_flight * sum(len(p) for p in prompts)

    def _completions(self, body: dict, count: bool = True, split_on_timeout: bool = False,
                     retry: bool = True) -> list[dict]:
        reply = self._request("POST", self.base_url + "/completions", {"model": self.model, **body}, retry=retry,
                              timeout_s=self._timeout_for(body["prompt"]), split_on_timeout=split_on_timeout)
        choices = reply.get("choices") if isinstance(reply, dict) else None
        if not isinstance(choices, list) or len(choices) != len(body["prompt"]):
            raise ModelServerError(f"model server {self.base_url}: /completions returned "
                                   f"{len(choices) if isinstance(choices, list) else 'no'} choices for "
                                   f"{len(body['prompt'])} prompts")
        if count:
            with self._stats_lock:
                self.stats.forward_calls += 1
                usage = reply.get("usage") or {}
                self.stats.tokens_processed += int(usage.get("prompt_tokens") or sum(len(p) for p in body["prompt"]))
        return sorted(choices, key=lambda c: c.get("index", 0))

    # -- which ways the server honours ------------------------------------------------------------
    def _detect_ways(self) -> None:
        """Once per server: which exact ways it honours, tried on a probe prompt that has nothing to do with
        the labels (so a server that ignores a parameter cannot pass by the labels happening to be its
        top tokens) and checked against prompt_logprobs where it gives them."""
        # at most 8 of the labels: a long label set must not make a way look unsupported (vLLM caps
        # logprob_token_ids at 128 and logprobs at --max-logprobs); _choose_mode applies those caps per set
        ids, decoded = self.label_ids[:8], self.label_decoded[:8]
        prompt = with_bos(self.tok, encode(self.tok, PROBE))
        ref = np.full((1, len(ids)), np.nan)
        try:
            self._prompt_logprob_rows([0], [prompt], ref, count=False, ids=ids)
            ref_row = ref[0] - np.logaddexp.reduce(ref[0])
        except ModelServerError as exc:
            ref_row = None
            log.info("model server %s: no prompt_logprobs to check against (%s)", self.base_url, exc)
        found, notes = [], []
        for way in EXACT_WAYS:
            try:  # overload (429, 5xx) is retried as always; 4xx is the server's answer about the parameter
                choice = self._completions(self._body(way, [prompt], ids), count=False)[0]
            except ModelServerError as exc:
                if exc.status is None or exc.status in RETRY_STATUS:  # unreachable / gave up: no answer about it
                    raise
                notes.append(f"{way}: HTTP {exc.status}")
                continue
            row = self._read_row(way, choice, ids, decoded)
            if row is None or np.isnan(row).any():
                why = ("the answer lacks label tokens" if row is None or way == "logprob-token-ids"
                       else "log-probs not normalised over the allowed tokens (raw logprobs mode)")
                notes.append(f"{way}: {why}")
                continue
            if ref_row is not None:
                diff = float(np.abs((row - np.logaddexp.reduce(row)) - ref_row).max())
                if diff > VERIFY_TOL:
                    notes.append(f"{way}: differs from prompt_logprobs by {diff:.3f}")
                    continue
            found.append(way)
        self._shared["ways"] = found
        log.info("model server %s: label log-probs by %s%s%s", self.base_url, ", ".join(found) or "top-k only",
                 f" (checked against prompt_logprobs)" if found and ref_row is not None else "",
                 f"; not available: {'; '.join(notes)}" if notes else "")
        if not found:
            log.warning("model server %s: labels outside the top-%d cost a prompt_logprobs request each; vLLM "
                        "0.32+ reads them exactly (logprob_token_ids), older vLLM does with "
                        "--logprobs-mode processed_logprobs", self.base_url, self.top_k)

    def _choose_mode(self) -> None:
        """The way for the current label set: the requested one, else the cheapest exact way the server
        honours (if detected), else top-k (one-token labels) or prompt-logprobs."""
        words = self.label_words
        single = all(len(encode(self.tok, " " + w)) == 1 for w in words)
        mode, why = self.requested_mode, "requested"
        if mode == "auto":
            ways = self._shared["ways"] or []
            ok = [w for w in ways if w != "logprob-token-ids" or len(words) <= MAX_LOGPROB_TOKEN_IDS]
            ok = [w for w in ok if w != "allowed-token-ids" or len(words) <= self.top_k]
            if ok:
                mode, why = ok[0], "exact, whatever the labels' rank"
            else:
                mode = "top-k" if single else "prompt-logprobs"
                why = "every label word is one token" if single else "a label word is several tokens"
        self._chosen_after_detection = self._shared["ways"] is not None
        provisional = self.requested_mode == "auto" and self._shared["ways"] is None
        if not provisional and (mode, words) != (getattr(self, "_logged_mode", None),
                                                 getattr(self, "_logged_words", None)):
            # logged once chosen for real: before the first batch the server's ways are not yet known
            log.info("remote scorer %s (%s): labels %s scored by %s (%s)", self.base_url, self.model,
                     ",".join(words), mode, why)
            self._logged_mode, self._logged_words = mode, list(words)
        self.mode = mode

    # -- label words ------------------------------------------------------------------------------
    def set_labels(self, label_words: list[str]) -> None:
        self.label_ids = label_token_ids(self.tok, label_words)  # the local scorer's rule
        self.label_words = list(label_words)
        self.label_decoded = [self.tok.decode([i]) for i in self.label_ids]
        self._choose_mode()

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
        if self.requested_mode == "auto" and self._shared["ways"] is None:
            with self._shared["lock"]:  # forks share the detection: one probe per server, not per thread
                if self._shared["ways"] is None:
                    self._detect_ways()
        if self.requested_mode == "auto" and not self._chosen_after_detection:  # also a fork labelled before
            self._choose_mode()
        prompts = [self.encode(prefix, t) for t in targets]
        raw = np.full((len(prompts), len(self.label_words)), np.nan)
        if self.mode == "prompt-logprobs":
            self._fallback(list(range(len(prompts))), prompts, raw, "a label word is several tokens")
        else:
            batches = [list(range(s, min(s + self.batch_size, len(prompts))))
                       for s in range(0, len(prompts), self.batch_size)]
            self._run(self._logprobs_batch, batches, prompts, raw)
            missing = [i for i in range(len(prompts)) if np.isnan(raw[i]).any()]
            if missing:
                with self._stats_lock:
                    self.stats.fallback_rows += len(missing)
                why = (f"a label outside the top-{self.top_k}" if self.mode == "top-k"
                       else f"no exact label log-probs by {self.mode}")
                self._fallback(missing, prompts, raw, why)
        return raw - np.logaddexp.reduce(raw, axis=1, keepdims=True)

    def _run(self, fn, batches, prompts, raw) -> None:
        if len(batches) == 1 or self.max_in_flight == 1:
            for b in batches:
                fn(b, prompts, raw)
            return
        with ThreadPoolExecutor(min(self.max_in_flight, len(batches))) as pool:
            for f in [pool.submit(fn, b, prompts, raw) for b in batches]:
                f.result()

    def _body(self, way: str, prompts: list[list[int]], ids: list[int] | None = None) -> dict:
        ids = list(self.label_ids if ids is None else ids)
        body = {"prompt": prompts, "max_tokens": 1, "temperature": 0, "return_tokens_as_token_ids": True}
        if way == "top-k":
            return {**body, "logprobs": self.top_k}
        body["logprobs"] = len(ids)
        if way == "logprob-token-ids":
            return {**body, "logprob_token_ids": ids}
        return {**body, "allowed_token_ids": ids}

    def _read_row(self, way: str, choice: dict, ids: list[int] | None = None,
                  decoded: list[str] | None = None) -> np.ndarray | None:
        """The log-probs of the label tokens (or `ids`) in one choice (NaN where missing; all NaN where an
        exact way's answer is not what that way promises); None where the answer has no log-probs at all."""
        ids = self.label_ids if ids is None else ids
        decoded = self.label_decoded if decoded is None else decoded
        top = ((choice.get("logprobs") or {}).get("top_logprobs") or [None])[0]
        if not isinstance(top, dict) or not top:
            return None
        by_id = {}
        for key, lp in top.items():
            if isinstance(key, str) and key.startswith("token_id:"):
                by_id[int(key[9:])] = lp
        row = np.full(len(ids), np.nan)
        for k, (tid, text) in enumerate(zip(ids, decoded)):
            lp = by_id.get(tid) if by_id else top.get(text)  # servers without token ids: decoded text
            if lp is not None:
                row[k] = float(lp)
        if way == "logprob-token-ids" and np.isnan(row).any():
            row[:] = np.nan
        if way == "allowed-token-ids" and (np.isnan(row).any() or abs(np.logaddexp.reduce(row)) > NORMALISED_TOL):
            row[:] = np.nan
        return row

    def _logprobs_batch(self, rows: list[int], prompts: list[list[int]], raw: np.ndarray) -> None:
        choices = self._completions(self._body(self.mode, [prompts[i] for i in rows]))
        for i, ch in zip(rows, choices):
            row = self._read_row(self.mode, ch)
            if row is None:
                raise ModelServerError(f"model server {self.base_url}: /completions returned no log-probs "
                                       "(choices[].logprobs.top_logprobs); ICM needs a server that returns "
                                       "next-token log-probs, such as vLLM")
            raw[i] = row
        with self._stats_lock:
            if self.mode == "top-k":
                self.stats.topk_rows += len(rows)
            else:
                self.stats.exact_rows += int(sum(not np.isnan(raw[i]).any() for i in rows))

    def _fallback(self, rows: list[int], prompts: list[list[int]], raw: np.ndarray, why: str) -> None:
        """prompt_logprobs for `rows`, in requests of fallback_batch sequences (rows x labels), progress logged."""
        per = max(1, self.fallback_batch // max(1, len(self.label_ids)))
        batches = [rows[s:s + per] for s in range(0, len(rows), per)]
        log.info("remote scorer: %d rows by prompt_logprobs (%s), %d rows x %d labels a request",
                 len(rows), why, per, len(self.label_ids))
        t0, progress = time.monotonic(), {"done": 0, "logged": 0}

        def one(batch, prompts, raw):
            self._prompt_logprob_rows(batch, prompts, raw)
            with self._stats_lock:
                progress["done"] += len(batch)
                done = progress["done"]
                if done - progress["logged"] >= self.progress_every or done == len(rows):
                    progress["logged"] = done
                    log.info("remote scorer: prompt_logprobs %d/%d rows, %.0fs", done, len(rows),
                             time.monotonic() - t0)

        self._run(one, batches, prompts, raw)

    def _prompt_logprob_rows(self, rows: list[int], prompts: list[list[int]], raw: np.ndarray,
                             count: bool = True, ids: list[int] | None = None) -> None:
        """Exact label log-probs (or those of `ids`) from prompt_logprobs on prompt + label token. A request
        that times out is split in two and each half sent (down to one row, which is retried as any request)."""
        ids = self.label_ids if ids is None else ids
        n_labels = len(ids)
        batch = [prompts[i] + [tid] for i in rows for tid in ids]
        try:
            choices = self._completions({"prompt": batch, "max_tokens": 1, "temperature": 0, "prompt_logprobs": 0},
                                        count=count, split_on_timeout=len(rows) > 1)
        except _RequestTimedOut as exc:
            half = len(rows) // 2
            log.warning("model server %s: prompt_logprobs request of %d rows: %s; splitting it in two",
                        self.base_url, len(rows), exc)
            with self._stats_lock:
                self.stats.split_requests += 1
            self._prompt_logprob_rows(rows[:half], prompts, raw, count, ids)
            self._prompt_logprob_rows(rows[half:], prompts, raw, count, ids)
            return
        for n, ch in enumerate(choices):
            i, k = rows[n // n_labels], n % n_labels
            plp = ch.get("prompt_logprobs")
            entry = plp[-1] if isinstance(plp, list) and plp else None
            tid = ids[k]
            item = entry.get(str(tid)) if isinstance(entry, dict) else None
            if item is None and isinstance(entry, dict):
                item = entry.get(tid)
            lp = item.get("logprob") if isinstance(item, dict) else item
            if lp is None:
                raise ModelServerError(f"model server {self.base_url}: /completions returned no prompt log-probs "
                                       f"(choices[].prompt_logprobs) for label {self.label_words[k]!r}; this server "
                                       "cannot score labels outside its top-k or multi-token labels (vLLM can)")
            raw[i, k] = float(lp)
        if count:
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
