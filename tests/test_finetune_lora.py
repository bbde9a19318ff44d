"""LoRA training: plan choice (QLoRA vs bf16), label-token loss, early stopping, version round trip."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from finetune_tiny import make_tiny_model, sentiment_rows
from icm_backend.finetune import lora
from icm_backend.finetune.data import TrainingRow, TrainingSet
from icm_backend.finetune.lora import Example, TrainConfig, choose_plan, split_holdout

REPO = Path(__file__).resolve().parents[1]
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


def test_plan_is_qlora_on_cuda_with_bitsandbytes():
    plan = choose_plan(device="cuda", has_bnb=True)
    assert (plan.kind, plan.quantize, plan.gradient_checkpointing) == ("qlora", "4bit", True)
    assert choose_plan(device="cuda", has_bnb=False).kind == "lora"
    cpu = choose_plan(device="cpu", has_bnb=True)
    assert (cpu.kind, cpu.quantize) == ("lora", "none")


def test_qlora_plan_prepares_the_kbit_model(monkeypatch):
    # Unverified on a GPU (none in CI): this checks the QLoRA path calls peft's k-bit preparation.
    import peft

    calls = []
    monkeypatch.setattr(peft, "prepare_model_for_kbit_training",
                        lambda m, use_gradient_checkpointing: calls.append(use_gradient_checkpointing) or m)
    model = object()
    assert lora.prepare_for_training(model, choose_plan("cuda", True)) is model and calls == [True]
    assert lora.prepare_for_training(model, choose_plan("cpu", False)) is model and calls == [True]


def test_holdout_is_stratified_and_skipped_for_tiny_sets():
    ex = [Example(f"p{i}", LABELS[i % 2]) for i in range(20)]
    train, hold = split_holdout(ex, TrainConfig(holdout_fraction=0.2, min_holdout=2))
    assert len(hold) == 4 and sorted(e.label for e in hold) == ["negative"] * 2 + ["positive"] * 2
    assert not set(e.prompt for e in hold) & set(e.prompt for e in train)
    assert split_holdout(ex[:5], TrainConfig())[1] == []  # too few: no early stopping, train max_steps


def test_label_logits_match_full_lm_head(tiny):
    import torch

    from icm_backend.engine.model import load_lm

    lm = load_lm(str(tiny), "none")
    t = lora.LabelTokenTrainer(lm.model, lm.tokenizer, LABELS, TrainConfig(loss="restricted"), "cpu")
    full = lora.LabelTokenTrainer(lm.model, lm.tokenizer, LABELS, TrainConfig(loss="full"), "cpu")
    batch = [t.encode("Text: a b c\nLabel:"), t.encode("Text: longer text here ok\nLabel:")]
    with torch.no_grad():
        r = t.label_logits(batch)
        f = full.label_logits(batch)[:, t.label_ids]
        ref = lm.model(input_ids=torch.tensor([batch[1]])).logits[0, -1, t.label_ids].float()
    assert torch.allclose(r, f, atol=1e-2) and torch.allclose(r[1], ref, atol=5e-2)


def test_train_version_learns_and_loads_back(tiny, tmp_path):
    from icm_backend.finetune.pipeline import train_version
    from icm_backend.versions import list_versions
    from icm_backend.engine.model import load_lm

    rows = sentiment_rows(40)
    ts = TrainingSet([TrainingRow({"text": r["text"]}, r["label"], "file", i) for i, r in enumerate(rows)])
    seen = []
    v = train_version(ts, "classify", LABELS, tmp_path / "md", str(tiny),
                      TrainConfig(max_steps=40, eval_every=5, patience=3, learning_rate=3e-3, min_holdout=2),
                      progress=lambda s, n, info: seen.append((s, n, info)))
    m = v.metrics
    assert seen and seen[0][0] == 1 and "train_loss" in seen[0][2]
    assert m["heldout_rows"] == 8 and m["heldout_best"]["loss"] < m["heldout_before"]["loss"]
    assert m["stopped"] in ("max_steps", "early_stopping") and m["steps"] <= 40
    files = {p.name for p in v.path.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "icm_base_model.txt", "metrics.json",
            "training_set.json"} <= files
    assert json.loads((v.path / "training_set.json").read_text())["file_rows"] == 40
    assert [x.name for x in list_versions(tmp_path / "md")] == [v.name]
    lm = load_lm(str(v.path), "none")  # what `icm-backend label --model <version dir>` does
    assert lm.adapter == str(v.path)  # the adapter is loaded (and merged into the weights for speed)


def test_single_label_is_refused(tiny, tmp_path):
    from icm_backend.errors import InputError
    from icm_backend.finetune.pipeline import train_version

    ts = TrainingSet([TrainingRow({"text": "x"}, "positive", "file", 0)])
    with pytest.raises(InputError, match="at least two different labels"):
        train_version(ts, "classify", LABELS, tmp_path, str(tiny))


def test_cli_finetune_then_versions(tiny, tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in sentiment_rows(16)))
    out = tmp_path / "md"
    cmd = [sys.executable, "-m", "icm_backend.cli", "finetune", str(f), "--task", "classify", "--labels",
           "negative,positive", "--out", str(out), "--model", str(tiny), "--max-steps", "3"]
    # the default: the promotion gate decides, as in the server's training; its verdict is said and stored
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    gated = json.loads(r.stdout.strip().splitlines()[-1])
    assert gated["gate"] and "skipped" not in gated["gate"] and Path(gated["path"]).is_dir()
    current = out / "versions" / "CURRENT"
    assert (current.exists() and current.read_text().strip() == gated["version"]) == gated["current"]
    assert json.loads((Path(gated["path"]) / "gate.json").read_text())["promoted"] == gated["current"]
    # --no-gate: current at once, and it says plainly that nothing compared it
    r = subprocess.run(cmd + ["--no-gate"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert "promotion gate skipped (--no-gate)" in r.stderr and res["gate"] == "skipped (--no-gate)"
    assert res["current"] and Path(res["path"]).is_dir() and res["steps"] == 3
    assert current.read_text().strip() == res["version"]
    r = subprocess.run([sys.executable, "-m", "icm_backend.cli", "versions", str(out)], capture_output=True,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and f"* {res['version']}" in r.stdout.splitlines()[1]
    assert "gate=promoted" in r.stdout.splitlines()[0] or "gate=kept" in r.stdout.splitlines()[0]  # the gated one
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "maybe"}\n')
    r = subprocess.run(cmd[:4] + [str(bad)] + cmd[5:], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: LABELS")
    assert "Traceback" not in r.stderr


def test_training_gives_the_process_its_threads_back(tiny, monkeypatch):
    """Torch's thread count is process-wide: training sets its own (ICM_TRAIN_THREADS here) and restores the
    caller's after, also when it fails; before, a bench or CLI that trained then labelled in one process
    labelled on the training's threads (one, when the load was high as training began)."""
    import torch

    from icm_backend.engine.model import load_lm

    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    monkeypatch.setenv("ICM_TRAIN_THREADS", str(other))
    seen = []
    examples = [Example(prompt=f"Review: {r['text']}\nSentiment:", label=r["label"]) for r in sentiment_rows(8)]
    lora.train_lora(load_lm(str(tiny), "none"), examples, LABELS, TrainConfig(max_steps=1, min_holdout=100),
                    progress=lambda s, n, info: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {other}  # training ran on its own threads
    assert torch.get_num_threads() == before  # and gave them back
    from icm_backend.errors import InputError

    with pytest.raises(InputError, match="no training rows"):
        lora.train_lora(load_lm(str(tiny), "none"), [], LABELS, TrainConfig(max_steps=1))
    assert torch.get_num_threads() == before
