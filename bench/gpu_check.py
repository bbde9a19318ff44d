"""The CUDA path in one short script: 4-bit NF4 scoring vs bf16, and QLoRA steps vs bf16 LoRA steps.

    python bench/gpu_check.py            # on a CUDA machine with bitsandbytes; prints one table, exit 1 on a miss
    python bench/gpu_check.py --cpu      # dry run of everything but NF4/QLoRA (fp32 vs bf16 on CPU)

No download: a small Llama is built from a config (seeded random weights, with a word-level tokenizer
built in code), saved as a HF folder, and loaded through the engine's own load_lm / TransformersScorer /
train_lora, so what runs is the path a GPU user runs. CI never runs this (no GPU there).

Checks (tolerances are for NF4 of a random 4-layer model; a trained model's margins are larger):
1. NF4 scoring: the model really holds bnb Linear4bit layers; rows normalised and finite; the same label
   as bf16 on >= 85% of 128 prompts; mean |log-prob diff| <= 0.10; label margins correlate (r >= 0.90).
2. QLoRA: two optimiser steps over the 4-bit model (prepare_model_for_kbit_training, gradient
   checkpointing), then the same two steps as bf16 LoRA: both finite, adapter weights moved, the
   first-step losses (before any update: base NF4 vs bf16) within 0.10.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

WORDS = ("the a film movie was is very quite not really story acting plot ending music and but it "
         "good great fine lovely superb bad awful dull boring terrible Text Label : . , negative positive").split()
LABELS = ["negative", "positive"]


def build_model(out: Path) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(dict.fromkeys(WORDS))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      initializer_range=0.08, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                      tie_word_embeddings=False)
    LlamaForCausalLM(cfg).to(torch.bfloat16).save_pretrained(out)
    fast.save_pretrained(out)
    return out


def prompts(n: int) -> list[str]:
    rng = np.random.default_rng(0)
    adj = ["good", "great", "fine", "lovely", "superb", "bad", "awful", "dull", "boring", "terrible"]
    noun = ["film", "movie", "story", "acting", "plot", "ending", "music"]
    return [f"Text : the {rng.choice(noun)} was {rng.choice(['', 'very ', 'not ', 'quite '])}{rng.choice(adj)} . "
            f"Label :" for _ in range(n)]


def check_scoring(folder: Path, quantize: str, results: dict) -> None:
    from icm_backend.engine.model import load_lm
    from icm_backend.engine.scorer import TransformersScorer

    texts = prompts(128)
    ref = load_lm(str(folder), quantize="none")
    if quantize == "cpu-fp32":
        q = load_lm(str(folder), quantize="none")
        q.model.float()
        name = "fp32 (CPU dry run)"
    else:
        import bitsandbytes as bnb

        q = load_lm(str(folder), quantize="4bit")
        n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in q.model.modules())
        results["nf4 Linear4bit layers"] = (n4, n4 > 0)
        name = "NF4"
    a = TransformersScorer(q, LABELS).score("", texts)
    b = TransformersScorer(ref, LABELS).score("", texts)
    same = float(np.mean(a.argmax(1) == b.argmax(1)))
    diff = float(np.abs(a - b).mean())
    m1, m2 = a[:, 1] - a[:, 0], b[:, 1] - b[:, 0]
    corr = float(np.corrcoef(m1, m2)[0, 1])
    results[f"{name} rows normalised, finite"] = (True, bool(np.isfinite(a).all() and np.allclose(np.exp(a).sum(1), 1)))
    results[f"{name} same label as bf16"] = (round(same, 3), same >= 0.85)
    results[f"{name} mean |logprob diff| vs bf16"] = (round(diff, 4), diff <= 0.10)
    results[f"{name} margin correlation vs bf16"] = (round(corr, 4), corr >= 0.90)
    results[f"{name} device"] = (q.device, True)


def lora_steps(folder: Path, plan_kind: str) -> dict:
    import torch

    from icm_backend.engine.model import load_lm
    from icm_backend.finetune.lora import Example, TrainConfig, TrainPlan, train_lora

    device = "cuda" if torch.cuda.is_available() else "cpu"
    quantize = "4bit" if plan_kind == "qlora" else "none"
    lm = load_lm(str(folder), quantize=quantize)
    plan = TrainPlan(plan_kind, quantize, device, plan_kind == "qlora", "gpu_check")
    texts = prompts(32)
    examples = [Example(t, "positive" if any(w in t for w in ("good", "great", "fine", "lovely", "superb"))
                        else "negative") for t in texts]
    cfg = TrainConfig(max_steps=2, batch_size=8, holdout_fraction=0.0, context="none", learning_rate=1e-3,
                      eval_every=100)
    losses: list[float] = []
    t0 = time.perf_counter()
    result = train_lora(lm, examples, LABELS, cfg, plan=plan, progress=lambda s, n, info: losses.append(info["train_loss"]))
    secs = time.perf_counter() - t0
    adapters = [p for n, p in result.model.named_parameters() if "lora_B" in n]
    moved = any(float(p.detach().abs().sum()) > 0 for p in adapters)  # lora_B starts at zero
    return {"losses": losses, "moved": moved, "seconds": secs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="dry run without CUDA: fp32 vs bf16, bf16 LoRA only")
    args = ap.parse_args(argv)
    import torch

    if not args.cpu:
        if not torch.cuda.is_available():
            print("SKIP: no CUDA device (use --cpu for a dry run)")
            return 0
        try:
            import bitsandbytes  # noqa: F401
        except Exception as exc:
            print(f"FAIL: bitsandbytes does not import on this CUDA machine: {exc}")
            return 1
    results: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_model(Path(tmp) / "tiny-llama")
        check_scoring(folder, "cpu-fp32" if args.cpu else "nf4", results)
        runs = {"lora": lora_steps(folder, "lora")}
        if not args.cpu:
            runs["qlora"] = lora_steps(folder, "qlora")
        for kind, run in runs.items():
            loss = run["losses"][0] if run["losses"] else None
            results[f"{kind}: 2 steps, adapter moved"] = (f"{run['seconds']:.1f}s", run["moved"])
            results[f"{kind}: first-step loss"] = (loss, loss is not None and np.isfinite(loss))
        if "qlora" in runs:
            l4, l16 = (runs[k]["losses"][0] if runs[k]["losses"] else None for k in ("qlora", "lora"))
            ok = l4 is not None and l16 is not None and abs(l4 - l16) <= 0.10
            results["qlora vs bf16 lora first-step loss"] = (None if not ok else round(abs(l4 - l16), 4), ok)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    print(f"\nCUDA path check on {device}, torch {torch.__version__}\n")
    print(f"{'check':48} {'value':>14}  ok")
    for name, (value, ok) in results.items():
        print(f"{name:48} {str(value):>14}  {'yes' if ok else 'NO'}")
    failed = [k for k, (_, ok) in results.items() if not ok]
    print("\n" + ("all checks passed" if not failed else f"{len(failed)} check(s) missed: {', '.join(failed)}"))
    print(json.dumps({k: v[0] for k, v in results.items()}, default=str))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
