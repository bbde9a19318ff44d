"""LoRA training on (prompt, label word) pairs with the loss on the label token only.

Why label-only loss: the engine reads one distribution, at the cue, over the label words. Training the
same thing is the objective we care about, and it is cheap: run the backbone for hidden states, take
the hidden state at the last prompt position, and apply lm_head only there (a full-sequence lm_head on
a 262k-vocab model like Gemma 3 costs most of the step time).

Plans: on CUDA with bitsandbytes, QLoRA over the 4-bit NF4 model (prepare_model_for_kbit_training);
elsewhere the base weights in the CPU's number format (engine.model.choose_dtype) with fp32 LoRA adapters.
The QLoRA path is unit-tested for its selection only and is unverified on a GPU.
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from icm_backend.errors import InputError
from icm_backend.engine.tokens import encode, label_logits, label_token_ids, logit_softcap, with_bos

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    lora_r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"  # every linear layer but lm_head
    learning_rate: float = 1e-4  # 3e-4 overfit 51 SST-2 rows in 10 steps (held-out loss up) on Gemma-3-270M
    batch_size: int = 8
    max_steps: int = 48  # cap: a CPU run on a few hundred labels finishes in minutes
    eval_every: int = 4  # steps between held-out evaluations (early stopping)
    patience: int = 3  # evaluations without held-out improvement before stopping
    holdout_fraction: float = 0.2  # of the accepted labels; 0 disables early stopping
    min_holdout: int = 3  # a held-out slice smaller than this: none (no early stopping, and the promotion gate
    # cannot test the version: it is kept, not served). 16 accepted labels give 3 held out.
    max_length: int = 512  # prompt tokens kept (from the end: the cue must survive)
    loss: str = "restricted"  # "restricted": softmax over the label words; "full": full vocabulary
    seed: int = 0
    # What the served method scores is a target *in context* (other labelled examples, then the target):
    # "in-context" trains on exactly that (each training row with `contexts_per_row` random contexts of
    # other training rows, up to `context_tokens`, plus once alone); "none" trains on single examples.
    context: str = "in-context"
    context_tokens: int = 384  # as the engine's SearchConfig.context_tokens
    contexts_per_row: int = 2


def context_for(method: str) -> str:
    """TrainConfig.context for the method that serves: it trains on what that method scores. Zero-shot
    scores each target alone, so in-context rows would only cost time (each is ~10x the tokens: a
    smollm2-135m step on 4 of them took ~20 s on one core of the AMD EPYC here, ~1.5 s alone)."""
    from icm_backend.engine.labeler import reads_context

    return "in-context" if reads_context(method) else "none"


@dataclass
class TrainPlan:
    kind: str  # "qlora" | "lora"
    quantize: str  # what to pass to load_lm
    device: str
    gradient_checkpointing: bool
    note: str


def choose_plan(device: str | None = None, has_bnb: bool | None = None) -> TrainPlan:
    """QLoRA where it exists (CUDA + bitsandbytes); LoRA over the unquantised weights otherwise."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if has_bnb is None:
        try:
            import bitsandbytes  # noqa: F401

            has_bnb = True
        except Exception:
            has_bnb = False
    if device == "cuda" and has_bnb:
        return TrainPlan("qlora", "4bit", device, True, "QLoRA on the 4-bit NF4 model (unverified on GPU in CI)")
    return TrainPlan("lora", "none", device, False, f"unquantised base weights, fp32 LoRA adapters on {device}")


def prepare_for_training(model, plan: TrainPlan):
    """k-bit preparation for QLoRA (casts norms to fp32, enables input grads for checkpointing)."""
    if plan.kind == "qlora":
        from peft import prepare_model_for_kbit_training

        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=plan.gradient_checkpointing)
    return model


def training_threads(env: dict | None = None) -> int:
    """CPU threads for training. Why not all cores: on a shared box (the server's request threads, other
    jobs) OpenMP oversubscription makes each step many times slower (measured on 2 cores under load: 10-27 s
    a step with 2 threads). On an otherwise idle 2-core AMD EPYC, smollm2-135m on 4 in-context rows: 13.7 s
    a step with 1 thread, 10.3 s with 2. ICM_TRAIN_THREADS overrides; else the idle cores, >= 1."""
    import os

    env = os.environ if env is None else env
    raw = env.get("ICM_TRAIN_THREADS")
    if raw:
        return max(1, int(raw))
    cores = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = 0.0
    return max(1, min(cores, cores - int(round(load))))


@dataclass
class Example:
    prompt: str
    label: str


@dataclass
class TrainResult:
    model: object  # the peft model (adapter weights = best held-out checkpoint)
    metrics: dict = field(default_factory=dict)


def split_indices(labels: list[str], cfg: TrainConfig) -> tuple[list[int], list[int]]:
    """Stratified held-out slice (per label, so a rare class is not all held out or all trained), as
    indices into `labels`: (train, held out)."""
    n_hold = int(round(len(labels) * cfg.holdout_fraction))
    if cfg.holdout_fraction <= 0 or n_hold < cfg.min_holdout or len(labels) - n_hold < cfg.min_holdout:
        return list(range(len(labels))), []
    rng = random.Random(cfg.seed)
    by_label: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        by_label.setdefault(label, []).append(i)
    train, hold = [], []
    for label in sorted(by_label):
        group = by_label[label][:]
        rng.shuffle(group)
        k = int(round(len(group) * cfg.holdout_fraction))
        hold += group[:k]
        train += group[k:]
    return train, hold


def split_holdout(examples: list[Example], cfg: TrainConfig) -> tuple[list[Example], list[Example]]:
    train, hold = split_indices([e.label for e in examples], cfg)
    return [examples[i] for i in train], [examples[i] for i in hold]


def in_context(targets: list[Example], pool: list[Example], count_tokens, budget: int, per_row: int,
               seed: int, alone: bool = True) -> list[Example]:
    """Each target as the engine scores it: random other labelled examples of `pool` ("prompt label"
    blocks joined by a blank line, as engine.context renders them) up to `budget` tokens, then the
    target's prompt. `per_row` contexts per target, plus the target alone if `alone`."""
    rng = random.Random(seed)
    cost = {id(e): count_tokens(f"{e.prompt} {e.label}") + 1 for e in pool}
    out = []
    for t in targets:
        if alone:
            out.append(Example(t.prompt, t.label))
        others = [e for e in pool if e is not t and e.prompt != t.prompt]
        for _ in range(per_row):
            rng.shuffle(others)
            blocks, used = [], 0
            for e in others:
                if used + cost[id(e)] > budget:
                    break
                blocks.append(f"{e.prompt} {e.label}\n\n")
                used += cost[id(e)]
            out.append(Example("".join(blocks) + t.prompt, t.label))
    return out


class LabelTokenTrainer:
    """Holds the tokenised data and does forward passes that score only the label position."""

    def __init__(self, model, tokenizer, label_words: list[str], cfg: TrainConfig, device: str):
        import torch

        self.model, self.tok, self.cfg, self.device = model, tokenizer, cfg, device
        self.label_words = list(label_words)
        self.label_ids = torch.tensor(label_token_ids(tokenizer, label_words), device=device)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.backbone, self.lm_head = base.model, base.lm_head
        self.softcap = logit_softcap(base.config)

    def encode(self, prompt: str) -> list[int]:
        return with_bos(self.tok, encode(self.tok, prompt)[-(self.cfg.max_length - 1):])

    def label_logits(self, batch: list[list[int]]):
        """Logits at the last prompt position of each row: [n, vocab] ("full") or [n, labels]."""
        import torch

        width = max(len(b) for b in batch)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        ids = torch.tensor([b + [pad] * (width - len(b)) for b in batch], device=self.device)
        mask = torch.tensor([[1] * len(b) + [0] * (width - len(b)) for b in batch], device=self.device)
        hidden = self.backbone(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        last = hidden[torch.arange(len(batch), device=self.device), torch.tensor([len(b) - 1 for b in batch], device=self.device)]
        if self.cfg.loss == "restricted":
            return label_logits(last, self.lm_head, self.label_ids, self.softcap)
        logits = self.lm_head(last).float()
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def loss(self, batch: list[list[int]], targets: list[int]):
        """Cross-entropy at the label position; returns (loss, n_correct over the label set)."""
        import torch
        import torch.nn.functional as F

        logits = self.label_logits(batch)
        t = torch.tensor(targets, device=self.device)
        if self.cfg.loss == "restricted":
            loss = F.cross_entropy(logits, t)
            pred = logits.argmax(-1)
        else:
            loss = F.cross_entropy(logits, self.label_ids[t])
            pred = logits[:, self.label_ids].argmax(-1)
        return loss, int((pred == t).sum())

    def evaluate(self, data: list[tuple[list[int], int]]) -> dict:
        import torch

        if not data:
            return {}
        self.model.eval()
        total, correct = 0.0, 0
        with torch.no_grad():
            for i in range(0, len(data), self.cfg.batch_size * 2):
                chunk = data[i:i + self.cfg.batch_size * 2]
                loss, c = self.loss([x for x, _ in chunk], [y for _, y in chunk])
                total += float(loss) * len(chunk)
                correct += c
        self.model.train()
        return {"loss": total / len(data), "accuracy": correct / len(data), "n": len(data)}


ProgressFn = Callable[[int, int, dict], None]


def train_lora(lm, examples: list[Example], label_words: list[str], cfg: TrainConfig | None = None,
               plan: TrainPlan | None = None, progress: ProgressFn | None = None,
               holdout: list[Example] | None = None) -> TrainResult:
    """Train a LoRA adapter in place on `lm.model` (load a fresh copy: the model is modified).
    `holdout` given: the held-out examples (no split of `examples` is made)."""
    import torch

    plan = plan or choose_plan(lm.device)
    # Torch's thread count is the process's: set for training, then given back, or every labelling after a
    # training in the same process (bench_loop, the CLI) ran on the threads the load allowed at that moment.
    before = torch.get_num_threads()
    if plan.device == "cpu":
        torch.set_num_threads(training_threads())
    try:
        return _train_lora(lm, examples, label_words, cfg or TrainConfig(), plan, progress, holdout)
    finally:
        torch.set_num_threads(before)


def _train_lora(lm, examples: list[Example], label_words: list[str], cfg: TrainConfig, plan: TrainPlan,
                progress: ProgressFn | None, holdout: list[Example] | None) -> TrainResult:
    import torch
    from peft import LoraConfig, get_peft_model

    if not examples:
        raise InputError("no training rows: nothing to fine-tune on")
    missing = sorted({e.label for e in examples} - set(label_words))
    if missing:
        raise InputError(f"labels {missing} of the training rows are not in the label set {label_words}")
    torch.manual_seed(cfg.seed)
    model = prepare_for_training(lm.model, plan)
    lcfg = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.target_modules, task_type="CAUSAL_LM")
    model = get_peft_model(model, lcfg)
    if plan.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
    model.train()
    trainer = LabelTokenTrainer(model, lm.tokenizer, label_words, cfg, lm.device)

    train_ex, hold_ex = split_holdout(examples, cfg) if holdout is None else (list(examples), list(holdout))
    index = {w: i for i, w in enumerate(label_words)}
    train = [(trainer.encode(e.prompt), index[e.label]) for e in train_ex]
    hold = [(trainer.encode(e.prompt), index[e.label]) for e in hold_ex]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=0.0)
    # Short linear warmup, then constant: with tens of steps a schedule matters little.
    warmup = max(1, min(4, cfg.max_steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))

    started = time.monotonic()
    before = trainer.evaluate(hold)
    best = {"step": 0, **before} if before else None
    best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    bad_evals, step, stopped = 0, 0, "max_steps"
    rng = random.Random(cfg.seed)
    order: list[int] = []
    history = []
    train_loss_ema = None
    while step < cfg.max_steps:
        if len(order) < cfg.batch_size:
            fresh = list(range(len(train)))
            rng.shuffle(fresh)
            order += fresh
        idx, order = order[:cfg.batch_size], order[cfg.batch_size:]
        batch = [train[i] for i in idx]
        loss, _ = trainer.loss([x for x, _ in batch], [y for _, y in batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        step += 1
        lv = float(loss.detach())
        train_loss_ema = lv if train_loss_ema is None else 0.8 * train_loss_ema + 0.2 * lv
        info = {"train_loss": round(lv, 4)}
        if hold and (step % cfg.eval_every == 0 or step == cfg.max_steps):
            ev = trainer.evaluate(hold)
            info.update({"heldout_loss": round(ev["loss"], 4), "heldout_accuracy": round(ev["accuracy"], 4)})
            history.append({"step": step, **ev})
            if ev["loss"] < best["loss"] - 1e-4:
                best = {"step": step, **ev}
                best_state = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
                bad_evals = 0
            else:
                bad_evals += 1
                if bad_evals >= cfg.patience:
                    stopped = "early_stopping"
        if progress:
            progress(step, cfg.max_steps, info)
        if not math.isfinite(lv):
            raise RuntimeError(f"training diverged at step {step} (loss {lv})")
        if stopped == "early_stopping":
            break
    if hold:
        # Keep the adapter of the best held-out evaluation (step 0 = untrained adapter = base model).
        with torch.no_grad():
            for n, p in model.named_parameters():
                if n in best_state:
                    p.copy_(best_state[n])
    model.eval()
    metrics = {
        "plan": asdict(plan),
        "config": asdict(cfg),
        "train_rows": len(train),
        "heldout_rows": len(hold),
        "steps": step,
        "stopped": stopped,
        "best_step": best["step"] if best else step,
        "heldout_before": before or None,
        "heldout_best": best if hold else None,
        "history": history,
        "train_loss_final_ema": train_loss_ema,
        "seconds": round(time.monotonic() - started, 1),
    }
    return TrainResult(model=model, metrics=metrics)
