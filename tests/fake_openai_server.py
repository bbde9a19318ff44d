"""A small OpenAI-compatible server for unit tests of the remote scorer (the real one is vLLM: see
vllm_harness.py). Next-token log-probs are a deterministic function of the prompt's token ids, so a
test can compute the expected rows itself; switches make it misbehave the ways real servers do.

The label-reading parameters behave as vLLM 0.32's do (measured: bench/results/issue19-remote/):
- `logprob_token_ids` (switch logprob_token_ids): top_logprobs holds exactly those tokens (plus the
  sampled one), whatever their rank; a server without it ignores the field and answers the plain top-k;
- `allowed_token_ids` / `logit_bias`: with logprobs_mode="processed" the log-probs are taken after
  them (allowed: renormalised over the allowed set); with "raw" (vLLM's default) before them, so the
  answer is the plain top-k of the whole vocabulary;
- max_logprobs: `logprobs` above it is HTTP 400, as vLLM's --max-logprobs;
- seconds_per_prompt_logprob_seq: a prompt_logprobs request sleeps this per sequence (the expensive way).
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

VOCAB = 512


class WordTokenizer:
    """Word-piece stand-in: every (space + word) is one token; words longer than 6 chars are two."""

    bos_token_id = 1

    def __init__(self):
        self.ids: dict[str, int] = {}
        self.back: dict[int, str] = {}

    def _id(self, piece: str) -> int:
        if piece not in self.ids:
            i = 2 + (sum(ord(c) * 31 ** k for k, c in enumerate(piece)) % (VOCAB - 2))
            while i in self.back and self.back[i] != piece:
                i = 2 + (i - 1) % (VOCAB - 2)
            self.ids[piece], self.back[i] = i, piece
        return self.ids[piece]

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        out = []
        for piece in re.findall(r"\s*\S+|\s+", text):
            if len(piece.strip()) > 6:
                out += [self._id(piece[:4]), self._id(piece[4:])]
            else:
                out.append(self._id(piece))
        return out

    def decode(self, ids: list[int]) -> str:
        return "".join(self.back.get(i, "?") for i in ids)


def next_token_logprobs(ids: list[int]) -> np.ndarray:
    """Log-probs over VOCAB after `ids`: a fixed pseudo-random function of the last 3 tokens and the length."""
    seed = (len(ids) * 1_000_003 + sum((k + 1) * t for k, t in enumerate(ids[-3:]))) % (2 ** 32)
    logits = np.random.default_rng(seed).normal(0, 2, VOCAB)
    return logits - np.logaddexp.reduce(logits)


@dataclass
class FakeOpenAI:
    model: str = "fake-lm"
    no_logprobs: bool = False  # /completions answers without log-probs (llama.cpp-like, or logprobs off)
    no_prompt_logprobs: bool = False
    token_id_keys: bool = True  # honour return_tokens_as_token_ids (vLLM does)
    fail_next: int = 0  # answer the next N /completions with 503
    tokenize_as: WordTokenizer | None = None  # answer /tokenize (and decode top-k keys) with this tokenizer
    logprob_token_ids: bool = False  # honour logprob_token_ids (vLLM 0.32+)
    logprobs_mode: str = "raw"  # "raw": log-probs before allowed_token_ids/logit_bias; "processed": after
    max_logprobs: int | None = None  # `logprobs` above it is HTTP 400 (vLLM --max-logprobs, default 20)
    seconds_per_prompt_logprob_seq: float = 0.0
    root: str | None = None  # /v1/models "root": what the served model was loaded from (vLLM sends the path)
    requests: list[dict] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    port: int = 0
    _server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> "FakeOpenAI":
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                fake.auth_headers.append(self.headers.get("Authorization", ""))
                if self.path == "/v1/models":
                    entry = {"id": fake.model, "max_model_len": 2048, **({"root": fake.root} if fake.root else {})}
                    return self._send(200, {"object": "list", "data": [entry]})
                self._send(404, {"error": "not found"})

            def do_POST(self):
                fake.auth_headers.append(self.headers.get("Authorization", ""))
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path == "/tokenize":
                    if fake.tokenize_as is None:
                        return self._send(404, {"detail": "Not Found"})
                    return self._send(200, {"tokens": fake.tokenize_as.encode(body["prompt"])})
                if self.path != "/v1/completions":
                    return self._send(404, {"error": "not found"})
                fake.requests.append(body)
                if fake.fail_next > 0:
                    fake.fail_next -= 1
                    return self._send(503, {"error": "overloaded"})
                if body.get("model") != fake.model:
                    return self._send(404, {"error": {"message": f"The model `{body.get('model')}` does not exist."}})
                error = fake.invalid(body)
                if error:
                    return self._send(400, {"error": {"message": error, "type": "BadRequestError", "code": 400}})
                if body.get("prompt_logprobs") is not None and fake.seconds_per_prompt_logprob_seq:
                    time.sleep(fake.seconds_per_prompt_logprob_seq * len(body["prompt"]))
                try:
                    self._send(200, fake.complete(body))
                except (BrokenPipeError, ConnectionResetError):  # the client gave up waiting
                    pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()

    def invalid(self, body: dict) -> str | None:
        k = body.get("logprobs")
        ids = body.get("logprob_token_ids") if self.logprob_token_ids else None
        if ids and k is not None and k != len(ids):
            return f"When both logprobs and logprob_token_ids are set, logprobs must equal len(logprob_token_ids)."
        if k is not None and self.max_logprobs is not None and not ids and k > self.max_logprobs:
            return f"Requested sample logprobs of {k}, which is greater than max allowed: {self.max_logprobs}"
        return None

    def _processed(self, body: dict, lp: np.ndarray) -> np.ndarray:
        """Log-probs after allowed_token_ids / logit_bias, as vLLM's processed_logprobs mode gives them
        (token t is row t % VOCAB, so a real tokenizer's ids work too)."""
        logits = lp.copy()
        for key, bias in (body.get("logit_bias") or {}).items():
            logits[int(key) % VOCAB] += float(bias)
        allowed = body.get("allowed_token_ids")
        if allowed:
            mask = np.full(VOCAB, -np.inf)
            mask[[a % VOCAB for a in allowed]] = 0.0
            logits = logits + mask
        return logits - np.logaddexp.reduce(logits)

    def complete(self, body: dict) -> dict:
        choices = []
        k = int(body.get("logprobs") or 0)
        for n, ids in enumerate(body["prompt"]):
            lp = next_token_logprobs(ids)
            processed = self.logprobs_mode == "processed"
            shown = self._processed(body, lp) if processed else lp
            allowed = body.get("allowed_token_ids")
            sampled = max(allowed, key=lambda a: lp[a % VOCAB]) if allowed else int(np.argmax(lp))
            choice = {"index": n, "text": "x", "logprobs": None, "prompt_logprobs": None}
            if k and not self.no_logprobs:
                wanted = body.get("logprob_token_ids") if self.logprob_token_ids else None
                if wanted:
                    top = list(wanted) + [sampled]
                elif processed and allowed:
                    top = sorted(allowed, key=lambda a: -shown[a % VOCAB])[:k]
                else:
                    top = [int(t) for t in np.argsort(-shown)[:k]]
                key = (lambda t: f"token_id:{t}") if body.get("return_tokens_as_token_ids") and self.token_id_keys \
                    else (lambda t: self.tokenize_as.decode([t]))  # decoded text, as OpenAI does
                choice["logprobs"] = {"top_logprobs": [{key(int(t)): float(shown[t % VOCAB]) for t in top}]}
            if body.get("prompt_logprobs") is not None and not self.no_logprobs and not self.no_prompt_logprobs:
                entries = [None]
                for pos in range(1, len(ids)):
                    t = ids[pos]
                    entries.append({str(t): {"logprob": float(next_token_logprobs(ids[:pos])[t % VOCAB]), "rank": 1}})
                choice["prompt_logprobs"] = entries
            choices.append(choice)
        n_tokens = sum(len(p) for p in body["prompt"])
        return {"object": "text_completion", "model": self.model, "choices": choices,
                "usage": {"prompt_tokens": n_tokens, "completion_tokens": len(choices)}}
