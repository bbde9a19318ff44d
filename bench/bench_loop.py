"""The review loop, measured round by round: does every accepted label make the next predictions better?

    python bench/bench_loop.py --data data/sst2/dev.tsv --labels negative,positive \\
        --n 512 --rounds 4 --per-round 32 --seed 0 --json runs/loop/seed0.json

TSV with header `text<TAB>label`; the label column is the simulated reviewer (a label word, or an index
into --labels) and is never read by the labelling. Round 0 = ICM with no labels. Each round the reviewer
labels the K tasks first in the review order (least confident first), the model is fine-tuned on all
reviewed labels (in-context prompts) and gated (it serves only if ICM with it beats the serving version
on a held-out slice of the reviewed labels), and ICM runs again with the reviewed labels fixed.

Measured per round on the tasks never reviewed: accuracy, ECE, the share of errors inside the flagged
20% (flag error recall), whether the new version was promoted, and the seconds the round took. In the
same table: the same loop reviewing random tasks instead of the queue, TF-IDF + logistic regression
(scikit-learn) trained on the same reviewed labels, and the gold-label ceiling measured the same way
(few-shot with every other task's gold label in context, with the round's model).

`--headline N` instead runs the paper's headline: fine-tune on ICM's own labels of N tasks (no human
at all) vs on the gold labels of the same N tasks, and compare held-out accuracy on the other tasks; with
`--task truthfulqa|gsm8k|alpaca --data <paper file>.json` on a paper task (groups never split).

`--arms disagree` reviews, each round, first the tasks where the version the gate kept last round and the
served labelling disagree (then the queue), and promotes that version when the humans side with it there
by the gate's sign test (it never trained on those tasks): the review budget spent where it both finds
errors and decides the promotion. `--score-kept` reports, for the other arms, what each kept version
would have scored on the never-reviewed tasks.

`--arms queue` / `--arms random` run one review strategy per process (e.g. in parallel on a GPU); a random
arm run alone computes its own round 0. Every round is checkpointed: a killed run resumes where it was.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_icm import whole_groups  # noqa: E402
from icm_backend.engine.calibration import ReviewConfig  # noqa: E402
from icm_backend.engine.evaluate import calibration  # noqa: E402
from icm_backend.engine.labeler import label_rows, run_method  # noqa: E402
from icm_backend.engine.search import SearchConfig  # noqa: E402
from icm_backend.engine.tasks import build_problem, gold_label  # noqa: E402
from icm_backend.errors import InputError  # noqa: E402

log = logging.getLogger("bench_loop")


def read_data(path: str, labels: list[str], n: int | None, task: str = "classify") -> tuple[list[dict], list[str]]:
    """TSV `text<TAB>label` for classify; a paper JSON file (the rows with a `label` field) for its task,
    cut at a consistency-group boundary so that no group is split."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"--data {path}: file not found")
    if p.suffix == ".json":
        raw = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(raw, list) or not all(isinstance(r, dict) and "label" in r for r in raw):
            raise InputError(f"--data {path}: a paper file is a JSON list of objects, each with a 'label'")
        cut = whole_groups(raw, n) if n else raw
        rows = [{k: v for k, v in r.items() if k != "label"} for r in cut]
        problem = build_problem(rows, task, None)
        gold = [gold_label(r["label"], problem) for r in cut]
        if None in gold:
            raise InputError(f"--data {path}: row {gold.index(None) + 1} label is not one of {problem.label_words}")
        return rows, gold
    with p.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        if not reader.fieldnames or "text" not in reader.fieldnames or "label" not in reader.fieldnames:
            raise InputError(f"--data {path}: needs a header with columns 'text' and 'label' (has {reader.fieldnames})")
        raw = list(reader)
    raw = raw[:n] if n else raw
    rows, gold = [], []
    for i, r in enumerate(raw):
        value = (r.get("label") or "").strip()
        if value in labels:
            gold.append(value)
        elif value.isdigit() and int(value) < len(labels):
            gold.append(labels[int(value)])
        else:
            raise InputError(f"--data {path}: row {i + 1} label {value!r} is not one of {labels} or an index into them")
        rows.append({"text": r["text"]})
    return rows, gold


ARMS = ("queue", "random", "disagree")
RESULT_KEYS = ("accuracy_by_round", "ece_by_round", "flag_error_recall_by_round", "promoted_by_round",
               "seconds_by_round", "flagged_by_round", "gold_ceiling_by_round", "reviewed_by_round",
               "tfidf_lr_by_round", "temperature_by_round", "calibrated_on_by_round", "reliable_by_round",
               "gate_by_round", "mean_confidence_by_round", "round0_accuracy_by_round", "candidate_accuracy_by_round",
               "candidate_vs_served_by_round", "queue_error_recall_by_round", "disagreement_test_by_round",
               "trial_score_by_round", "core_origin_by_round")


class Loop:
    """One review strategy ("queue" or "random") run for R rounds."""

    def __init__(self, args, rows, gold, strategy: str, out_dir: Path, round0: "Loop | None" = None):
        self.args, self.rows, self.gold, self.strategy = args, rows, gold, strategy
        self.round0 = round0  # round 0 has no labels, so it is the same run for every strategy: taken, not rerun
        self.words = args.labels
        self.model_dir = out_dir / f"model-{strategy}-seed{args.seed}"
        self.rng = np.random.default_rng([args.seed, 7 if strategy == "random" else 3])
        self.reviewed: dict[int, str] = {}
        self.serving_path = args.model
        self.serving_name = f"base:{args.model}"
        self.res = {k: [] for k in RESULT_KEYS}
        self.state_file = out_dir / f"state-{strategy}-seed{args.seed}.json"
        self.work = out_dir
        self.queue: list[int] = []  # the last round's review order
        self.first_queue: list[int] = []  # round 0's, for a second strategy that starts from the same round 0
        # Round 0's labels, to score them on each round's never-reviewed tasks: a queue removes the tasks the
        # model gets wrong, so accuracy on what is left rises even if the new labelling changed nothing.
        self.round0_labels: list[str] = []
        self.round = 0
        self.candidate: str | None = None  # this round's trained version if the gate kept it
        # "disagree" arm: the last round's served labels and the kept version's labels of the same tasks
        self.served_labels: list[str] = []
        self.candidate_labels: list[str] = []
        self.disagreement_test: dict | None = None  # this round's reviewed disagreements, as a sign test
        self.trial_score: dict | None = None  # the scores LS would show with the kept version on trial
        # The served labelling's core ({row: label}): the next labelling reuses it, the human labels
        # in place of its own, as the server's job does with the project's core (engine.core.reuse_core).
        self.core: dict[int, str] | None = None
        self.round0_core: dict[int, str] | None = None  # for a second strategy that starts from the same round 0
        self.prior_core: dict[int, str] | None = None
        if self.state_file.exists():  # resume: a run cut into pieces (each under the CPU lock's time slice)
            st = json.loads(self.state_file.read_text())
            self.res, self.round, self.queue = st["res"], st["round"], st["queue"]
            self.reviewed = {int(k): v for k, v in st["reviewed"].items()}
            self.first_queue = st.get("first_queue", [])
            self.round0_labels = st.get("round0_labels", [])
            self.served_labels, self.candidate_labels = st.get("served_labels", []), st.get("candidate_labels", [])
            self.core = {int(k): v for k, v in st["core"].items()} if st.get("core") else None
            self.round0_core = {int(k): v for k, v in st["round0_core"].items()} if st.get("round0_core") else None
            for k in RESULT_KEYS:  # a state saved before a key existed: None for the rounds it missed
                self.res.setdefault(k, [None] * len(self.res["accuracy_by_round"]))
            self.serving_path, self.serving_name = st["serving_path"], st["serving_name"]
            self.rng.bit_generator.state = st["rng"]
            print(f"[{strategy} seed {args.seed}] resuming at round {self.round}", flush=True)
        from icm_backend.engine.model import load_lm

        self.lm = load_lm(self.serving_path, "none")

    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"res": self.res, "round": self.round, "queue": self.queue,
                                   "reviewed": self.reviewed, "first_queue": self.first_queue,
                                   "round0_labels": self.round0_labels, "serving_path": self.serving_path,
                                   "served_labels": self.served_labels, "candidate_labels": self.candidate_labels,
                                   "serving_name": self.serving_name, "rng": self.rng.bit_generator.state,
                                   "core": self.core, "round0_core": self.round0_core}))
        tmp.replace(self.state_file)

    def label(self, rnd: int, model=None, tag: str = ""):
        """ICM over every task with the reviewed labels fixed, by the serving model (or `model`), reusing the
        served labelling's core where the engine allows, as the server's job (and its trial pass) does."""
        a = self.args
        config = SearchConfig(max_iters=a.max_iters, context_tokens=a.context_tokens, checkpoint_every_s=30)
        ck = self.work / f"ckpt-{self.strategy}-seed{a.seed}-round{rnd}{tag}.json"
        return label_rows(self.rows, task="classify", labels=self.words, method="icm", model=model or self.lm,
                          seed=a.seed, config=config, fixed=dict(self.reviewed), review=ReviewConfig(fraction=0.2),
                          checkpoint=ck, core=self.prior_core)

    def gold_ceiling(self, free: list[int]) -> float:
        from icm_backend.engine.labeler import make_scorer

        problem = build_problem(self.rows, "classify", self.words)
        scorer = make_scorer(self.lm, problem.label_words)
        y, _ = run_method(problem, scorer, "gold-fewshot", self.args.seed,
                          SearchConfig(context_tokens=self.args.context_tokens), gold=self.gold,
                          window=getattr(self.lm, "context_window", None))
        return float(np.mean([self.words[y[i]] == self.gold[i] for i in free]))

    def tfidf_lr(self, free: list[int]) -> float | None:
        if len(set(self.reviewed.values())) < 2:
            return None
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        idx = sorted(self.reviewed)
        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True)
        x = vec.fit_transform([self.rows[i]["text"] for i in idx])
        clf = LogisticRegression(max_iter=1000, C=10.0).fit(x, [self.reviewed[i] for i in idx])
        pred = clf.predict(vec.transform([self.rows[i]["text"] for i in free]))
        return float(np.mean([p == self.gold[i] for p, i in zip(pred, free)]))

    def finetune(self) -> tuple[bool | None, str]:
        from icm_backend.engine.model import load_lm
        from icm_backend.finetune.data import TrainingRow, TrainingSet
        from icm_backend.finetune.lora import TrainConfig
        from icm_backend.finetune.pipeline import train_gate_promote

        ts = TrainingSet(rows=[TrainingRow(row=dict(self.rows[i]), label=y, source="human", task_id=i)
                               for i, y in sorted(self.reviewed.items())])
        cfg = TrainConfig(max_steps=self.args.train_steps, seed=self.args.seed, batch_size=self.args.train_batch,
                          context_tokens=self.args.train_context_tokens)
        try:
            gate = {"method": "icm", "serving_model": self.serving_path, "serving_name": self.serving_name,
                    "max_iters": self.args.gate_iters}
            version, verdict, _ = train_gate_promote(ts, "classify", self.words, self.model_dir, self.args.model, cfg,
                                                     gate)
        except InputError as exc:  # e.g. every reviewed label the same: nothing to fine-tune on
            return None, str(exc)
        self.candidate = None if verdict.promoted else str(version.path)
        if verdict.promoted:
            self.serving_path, self.serving_name = str(version.path), version.name
            self.lm = load_lm(self.serving_path, "none")
        return verdict.promoted, verdict.reason

    def score_candidate(self, rnd: int, served, free: list[int]) -> tuple[float | None, dict | None]:
        """The version the gate kept, labelling the project as if it served: its accuracy on the tasks never
        reviewed, and the sign test against what was served (b = tasks only it gets right, c = only the served
        labelling). What the gate's small held-out slice could not see."""
        if not self.candidate:
            return None, None
        from icm_backend.engine.model import load_lm
        from icm_backend.finetune.gate import sign_test

        preds = self.label(rnd, model=load_lm(self.candidate, "none"), tag="-candidate")
        new = [preds[i].label == self.gold[i] for i in free]
        old = [served[i].label == self.gold[i] for i in free]
        b, c, p = sign_test(new, old)
        self.candidate_labels = [pr.label for pr in preds]
        self.trial_score = self.score_as_served_on_trial(served, preds, free)
        return round(float(np.mean(new)), 4), {"b": b, "c": c, "p": round(p, 4)}

    def score_as_served_on_trial(self, served, cand, free: list[int]) -> dict:
        """The score Label Studio shows while the kept version is on trial (labelstudio.results.on_trial: where
        the two disagree, their mean probability of the served label), on the never-reviewed tasks: its ECE,
        the errors inside its lowest 20 % (consistency flags first, as the queue), and how many disagree."""
        k = len(self.words)
        score = np.array([served[i].confidence if cand[i].label == served[i].label else
                          (served[i].confidence + (1.0 - cand[i].confidence) / (k - 1)) / 2 for i in free])
        correct = np.array([served[i].label == self.gold[i] for i in free], dtype=float)
        ece, _ = calibration(score, correct)
        order = sorted(range(len(free)), key=lambda j: (not any(f.kind == "inconsistent" for f in served[free[j]].flags),
                                                        score[j], free[j]))
        low = set(order[:int(np.ceil(0.2 * len(free)))])
        wrong = {j for j in range(len(free)) if not correct[j]}
        return {"ece": round(float(ece), 4), "error_recall": round(len(wrong & low) / len(wrong), 4) if wrong else None,
                "disagreements": int(sum(cand[i].label != served[i].label for i in free))}

    def promote_on_disagreements(self, prev: str | None) -> tuple[bool, str]:
        """"disagree" arm: the kept version's case rests on the tasks where it and the served labelling
        disagreed that were reviewed this round (it never trained on them): promoted by the server's trial
        rule (finetune.trial.decide: the gate's sign test, b = the human agrees with it, c = with the served
        label)."""
        from icm_backend.finetune.gate import DEFAULT_ALPHA

        t = self.disagreement_test
        if not prev or not t or not (t["b"] + t["c"]):
            return False, ""
        promoted = t.get("promote", t["b"] > t["c"] and t["p"] <= DEFAULT_ALPHA)  # older results: the same rule
        if promoted:
            from icm_backend.engine.model import load_lm

            self.serving_path, self.serving_name = prev, Path(prev).name
            self.lm = load_lm(self.serving_path, "none")
        return promoted, (f"kept version {'promoted' if promoted else 'not promoted'} on {t['b'] + t['c']} reviewed "
                          f"disagreements ({t['b']}:{t['c']}, p {t['p']:.2f})")

    def run(self) -> dict:
        a = self.args
        for rnd in range(self.round, a.rounds + 1):
            t0 = time.monotonic()
            promoted, why = None, ""
            pending = self.work / f"pending-{self.strategy}-seed{a.seed}-round{rnd}.json"
            if rnd > 0 and pending.exists():  # reviewed and trained before an interruption: go on from there
                p = json.loads(pending.read_text())
                promoted, why, t_before = p["promoted"], p["why"], p["seconds"]
                self.candidate = p.get("candidate")
            elif rnd > 0:
                prev = self.candidate
                self.review_next()
                self.candidate = None
                by_review, review_why = (self.promote_on_disagreements(prev) if self.strategy == "disagree"
                                         else (False, ""))
                if a.finetune:
                    promoted, why = self.finetune()
                if review_why:
                    promoted = bool(promoted) or by_review
                    why = f"{review_why}; new version: {why}"
                t_before = time.monotonic() - t0
                self.save_pending(pending, promoted, why, t_before)
            else:
                t_before = 0.0
            if rnd == 0 and self.round0 is not None:
                self.res = {k: v[:1] for k, v in self.round0.res.items()}
                self.queue = list(self.round0.first_queue)
                self.round0_labels = list(self.round0.round0_labels)
                self.core = dict(self.round0.round0_core) if self.round0.round0_core else None
                self.round = 1
                self.save()
                continue
            t0 = time.monotonic() - t_before
            self.prior_core = self.core  # the served and the kept version's labelling both start from it
            preds = self.label(rnd)
            seconds = time.monotonic() - t0
            free = [i for i in range(len(self.rows)) if i not in self.reviewed]
            correct = np.array([preds[i].label == self.gold[i] for i in free], dtype=float)
            conf = np.array([preds[i].confidence for i in free])
            flagged = np.array([bool(preds[i].flags) for i in free])
            errors = correct == 0
            if rnd == 0:
                self.round0_labels = [p.label for p in preds]
            self.core = dict(preds.core) if getattr(preds, "core", None) else None
            r0 = (float(np.mean([self.round0_labels[i] == self.gold[i] for i in free]))
                  if self.round0_labels else None)  # None: resumed from a state saved before this key existed
            ece, _ = calibration(conf, correct)
            recall = float((errors & flagged).sum() / errors.sum()) if errors.any() else None
            rep = preds.assessment
            r = self.res
            r["accuracy_by_round"].append(round(float(correct.mean()), 4))
            r["round0_accuracy_by_round"].append(None if r0 is None else round(r0, 4))
            r["ece_by_round"].append(round(float(ece), 4))
            r["flag_error_recall_by_round"].append(None if recall is None else round(recall, 4))
            r["promoted_by_round"].append(promoted)
            r["seconds_by_round"].append(round(seconds, 1))
            r["flagged_by_round"].append(int(flagged.sum()))
            r["reviewed_by_round"].append(len(self.reviewed))
            r["temperature_by_round"].append(rep.temperature)
            r["calibrated_on_by_round"].append(rep.calibrated_on)
            r["reliable_by_round"].append(rep.reliable)
            r["mean_confidence_by_round"].append(rep.mean_confidence)
            r["gate_by_round"].append(why)
            r["core_origin_by_round"].append(preds.core_origin.text() if preds.core_origin else None)
            self.candidate_labels, self.trial_score = [], None
            cand_acc, cand_test = (self.score_candidate(rnd, preds, free) if a.score_kept or self.strategy == "disagree"
                                   else (None, None))
            self.served_labels = [pr.label for pr in preds]
            r["disagreement_test_by_round"].append(self.disagreement_test)
            r["candidate_accuracy_by_round"].append(cand_acc)
            r["candidate_vs_served_by_round"].append(cand_test)
            r["trial_score_by_round"].append(self.trial_score)
            r["tfidf_lr_by_round"].append(self.tfidf_lr(free))
            ceiling = a.ceiling and self.strategy == "queue"  # the ceiling is the table's, not each arm's
            r["gold_ceiling_by_round"].append(round(self.gold_ceiling(free), 4) if ceiling else None)
            print(f"[{self.strategy} seed {a.seed}] round {rnd}: acc {correct.mean():.3f} ECE {ece:.3f} "
                  f"flag-recall {recall} promoted {promoted} T={rep.temperature} ({rep.calibrated_on}) "
                  f"{seconds:.0f}s {why}", flush=True)
            # the review queue: consistency flags first, then expected error (least confident first)
            self.queue = sorted(free, key=lambda i: (not any(f.kind == "inconsistent" for f in preds[i].flags),
                                                     preds[i].confidence, i))
            nxt = self.next_order()[:int(np.ceil(0.2 * len(free)))]
            wrong = {i for i, e in zip(free, errors) if e}
            r["queue_error_recall_by_round"].append(
                round(len(wrong.intersection(nxt)) / len(wrong), 4) if wrong else None)
            if rnd == 0:
                self.first_queue = list(self.queue)
                self.round0_core = self.core
            self.round = rnd + 1
            self.save()
        return self.res

    def save_pending(self, path: Path, promoted, why: str, seconds: float) -> None:
        self.save()
        path.write_text(json.dumps({"promoted": promoted, "why": why, "seconds": seconds, "candidate": self.candidate}))

    def next_order(self) -> list[int]:
        """The review order over the tasks not reviewed yet. "disagree": the tasks where the kept version and
        the served labelling disagree come first (each review there is a trial of the promotion test, and one
        of the two labels is wrong), in the queue's order, then the rest of the queue."""
        free = [i for i in self.queue if i not in self.reviewed]
        if self.strategy != "disagree" or not self.candidate_labels:
            return free
        split = [i for i in free if self.candidate_labels[i] != self.served_labels[i]]
        return split + [i for i in free if self.candidate_labels[i] == self.served_labels[i]]

    def review_next(self) -> None:
        free = self.next_order()
        k = min(self.args.per_round, len(free))
        chosen = self.rng.choice(free, size=k, replace=False) if self.strategy == "random" else free[:k]
        self.disagreement_test = None
        if self.strategy == "disagree" and self.candidate_labels:
            from icm_backend.finetune.trial import TrialRecord, decide  # the server's rule for a version on trial

            split = [int(i) for i in chosen if self.candidate_labels[i] != self.served_labels[i]]
            record = TrialRecord("kept", "served", 0, {i: (self.candidate_labels[i], self.served_labels[i])
                                                      for i in split})
            v = decide(record, {i: self.gold[i] for i in split})
            self.disagreement_test = {"reviewed": v.reviewed, "b": v.b, "c": v.c, "p": v.p, "promote": v.promote}
        for i in chosen:
            self.reviewed[int(i)] = self.gold[int(i)]


def headline(args, rows, gold, out_dir: Path) -> dict:
    """Fine-tune on ICM's own labels of N tasks vs their gold labels; held-out accuracy on the rest."""
    from icm_backend.engine.model import load_lm
    from icm_backend.finetune.data import TrainingRow, TrainingSet
    from icm_backend.finetune.lora import TrainConfig
    from icm_backend.finetune.pipeline import train_version

    n = args.headline
    group = [r.get("consistency_id", i) for i, r in enumerate(rows)]
    while 0 < n < len(rows) and group[n] == group[n - 1]:  # never split a consistency group
        n += 1
    train, test = list(range(n)), list(range(n, len(rows)))
    base = load_lm(args.model, "none")
    icm = label_rows([rows[i] for i in train], task=args.task, labels=args.task_labels, method="icm", model=base,
                     seed=args.seed, config=SearchConfig(max_iters=args.max_iters, context_tokens=args.context_tokens))
    icm_labels = [p.label for p in icm]
    out = {"n_train": n, "n_test": len(test), "icm_label_accuracy": float(np.mean([y == gold[i] for y, i in zip(icm_labels, train)]))}
    methods = [m for m in args.headline_methods.split(",") if m]

    def evaluate(model) -> dict:
        res = {}
        for m in methods:
            preds = label_rows([rows[i] for i in test], task=args.task, labels=args.task_labels, method=m, model=model,
                               seed=args.seed, config=SearchConfig(max_iters=args.max_iters,
                                                                   context_tokens=args.context_tokens))
            res[m] = round(float(np.mean([p.label == gold[i] for p, i in zip(preds, test)])), 4)
        return res

    out["base"] = evaluate(base)
    for name, labels in (("icm_labels", icm_labels), ("gold_labels", [gold[i] for i in train])):
        ts = TrainingSet(rows=[TrainingRow(row=dict(rows[i]), label=y, source="file", task_id=i)
                               for i, y in zip(train, labels)])
        try:
            v = train_version(ts, args.task, args.labels, out_dir / f"headline-{name}-seed{args.seed}", args.model,
                              TrainConfig(max_steps=args.train_steps, seed=args.seed, batch_size=args.train_batch,
                                          context_tokens=args.train_context_tokens))
        except InputError as exc:  # e.g. ICM gave every task one label: there is nothing to fine-tune on
            out[name], out[f"{name}_error"] = {m: None for m in methods}, str(exc)
            print(f"headline {name}: not trained: {exc}", flush=True)
            continue
        out[name] = evaluate(load_lm(str(v.path), "none"))
        print(f"headline {name}: {out[name]}", flush=True)
    print(f"\nFine-tuning on ICM's own labels vs gold labels ({n} tasks each; ICM's labels {out['icm_label_accuracy']:.3f} "
          f"correct), held-out accuracy on {len(test)} tasks, model {args.model}\n")
    print("| method | base | fine-tuned on ICM labels | fine-tuned on gold labels |\n|---|---|---|---|")
    for m in methods:
        cell = lambda v: "not trained" if v is None else f"{v:.3f}"  # noqa: E731
        print(f"| {m} | {cell(out['base'][m])} | {cell(out['icm_labels'][m])} | {cell(out['gold_labels'][m])} |")
    return out


def at(res: dict | None, key: str, k: int):
    return res[key][k] if res and k < len(res.get(key) or []) else None  # files from before a key existed lack it


def print_table(res: dict) -> None:
    q, r = res.get("queue"), res.get("random")
    f = lambda v, d=3: "-" if v is None else (f"{v:.{d}f}" if isinstance(v, float) else str(v))  # noqa: E731

    def kept(a: dict | None, k: int) -> str:
        acc, t = at(a, "candidate_accuracy_by_round", k), at(a, "candidate_vs_served_by_round", k)
        return "-" if acc is None else f"{acc:.3f} ({t['b']}:{t['c']}, p {t['p']:.2f})"

    if q:
        print_queue_table(res, q, r, f, kept)
    print_arm_tables(res, f, kept)
    for arm in ("queue", "random", "disagree"):  # how each round's labelling got its core (engine.core)
        origins = (res.get(arm) or {}).get("core_origin_by_round") or []
        if any(origins):
            print(f"\n{arm}: each round's core\n" + "\n".join(f"  round {k}: {o or '-'}" for k, o in enumerate(origins)))


def print_queue_table(res: dict, q: dict, r: dict | None, f, kept) -> None:
    rounds = len(q["accuracy_by_round"])
    print(f"\nReview loop on {res['data']} ({res['n']} tasks, {res['per_round']} reviewed per round, model "
          f"{res['model']}, seed {res['seed']}); accuracy etc. on the tasks never reviewed\n")
    print("| round | reviewed | ICM acc (queue) | round 0's labels, same tasks | ECE | errors in flagged 20% | promoted | "
          "kept version, same tasks (only it right : only served right) | s | ICM acc (random review) "
          "| TF-IDF+LR (queue's labels) | TF-IDF+LR (random labels) | gold ceiling |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for k in range(rounds):
        print(f"| {k} | {q['reviewed_by_round'][k]} | {f(q['accuracy_by_round'][k])} | "
              f"{f(at(q, 'round0_accuracy_by_round', k))} | {f(q['ece_by_round'][k])} | "
              f"{f(q['flag_error_recall_by_round'][k], 2)} | {f(q['promoted_by_round'][k])} | {kept(q, k)} | "
              f"{q['seconds_by_round'][k]:.0f} | "
              f"{f(at(r, 'accuracy_by_round', k))} | {f(q['tfidf_lr_by_round'][k])} | "
              f"{f(at(r, 'tfidf_lr_by_round', k))} | "
              f"{f(q['gold_ceiling_by_round'][k])} |")


def print_arm_tables(res: dict, f, kept) -> None:
    for arm, title in (("random", "Random review"), ("disagree", "Disagreements first (the kept version vs the served "
                                                                   "labelling), then the queue")):
        a_ = res.get(arm)
        if not a_:
            continue
        print(f"\n{title}\n\n| round | reviewed | ICM acc | round 0's labels, same tasks | errors in the first 20% of "
              "the review order | promoted | kept version, same tasks (only it right : only served right) | "
              "reviewed disagreements (human sides with kept : with served) |\n|---|---|---|---|---|---|---|---|")
        for k in range(len(a_["accuracy_by_round"])):
            d = at(a_, "disagreement_test_by_round", k)
            dis = "-" if not d else f"{d['reviewed']} ({d['b']}:{d['c']}, p {d['p']:.2f})"
            print(f"| {k} | {a_['reviewed_by_round'][k]} | {f(a_['accuracy_by_round'][k])} | "
                  f"{f(at(a_, 'round0_accuracy_by_round', k))} | {f(at(a_, 'queue_error_recall_by_round', k), 2)} | "
                  f"{f(a_['promoted_by_round'][k])} | {kept(a_, k)} | {dis} |")


def plot_loop(res: dict, path: Path) -> None:
    """Two panels: accuracy on the never-reviewed tasks by labels reviewed (each arm next to round 0's labels
    scored on the same tasks: a gap between them is what the reviewed labels changed, the rest is the review
    choosing which tasks are left), and each arm's flag recall and ECE against the issue's targets."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2))
    for arm, colour in zip(ARMS, ("tab:blue", "tab:orange", "tab:green")):
        a = res.get(arm)
        if not a:
            continue
        x = a["reviewed_by_round"]
        ax.plot(x, a["accuracy_by_round"], "o-", color=colour, label=f"{arm} review: the loop's labels")
        cand = a.get("candidate_accuracy_by_round") or []
        if any(v is not None for v in cand):
            ax.plot([xi for xi, v in zip(x, cand) if v is not None], [v for v in cand if v is not None], "^",
                    color=colour, ms=8, mfc="none", label=f"{arm} review: the version the gate kept, if served")
        if a.get("round0_accuracy_by_round"):
            ax.plot(x, a["round0_accuracy_by_round"], "s--", color=colour, alpha=0.6,
                    label=f"{arm} review: round 0's labels, same tasks")
        bx.plot(x, a["flag_error_recall_by_round"], "o-", color=colour, label=f"{arm}: errors in the flagged 20%")
        bx.plot(x, a["ece_by_round"], "o--", color=colour, alpha=0.6, label=f"{arm}: ECE")
    q = res.get("queue") or {}
    if q and any(v is not None for v in q.get("gold_ceiling_by_round", [])):
        ax.plot(q["reviewed_by_round"], q["gold_ceiling_by_round"], "k:", label="gold-label ceiling (queue's tasks)")
    ax.set_xlabel("labels reviewed")
    ax.set_ylabel("accuracy on tasks never reviewed")
    ax.set_title(f"{Path(str(res['data'])).name}, {res['n']} tasks, {res['model']}, seed {res['seed']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    bx.axhline(0.6, color="tab:red", ls=":", lw=1, label="recall target 0.60")
    bx.axhline(0.05, color="tab:green", ls=":", lw=1, label="ECE target 0.05")
    bx.set_ylim(0, 1)
    bx.set_xlabel("labels reviewed")
    bx.grid(alpha=0.3)
    bx.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", help="TSV with header text<TAB>label (required unless --replot)")
    ap.add_argument("--labels", default="", help="label words, e.g. negative,positive (classify only)")
    ap.add_argument("--task", default="classify", help="classify (TSV) or a paper task with a JSON --data file "
                    "(truthfulqa, gsm8k, alpaca, claims, comparison); the review loop is classify only")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--per-round", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", required=True, help="output JSON")
    ap.add_argument("--n", type=int, default=512, help="first N tasks of the file")
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--max-iters", type=int, default=None, help="ICM iteration cap (default 20 x unlabelled)")
    ap.add_argument("--gate-iters", type=int, default=None, help="ICM iteration cap inside the promotion gate")
    ap.add_argument("--context-tokens", type=int, default=384)
    ap.add_argument("--train-steps", type=int, default=24)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--train-context-tokens", type=int, default=192,
                    help="context budget of the in-context training prompts (memory and time grow with it)")
    ap.add_argument("--no-finetune", dest="finetune", action="store_false")
    ap.add_argument("--score-kept", action="store_true",
                    help="also label with each version the gate kept (as if it served) and report its accuracy on the "
                         "never-reviewed tasks and a sign test against the served labelling (one more ICM run a round)")
    ap.add_argument("--no-random", dest="random", action="store_false", help="skip the random-review baseline")
    ap.add_argument("--arms", default="queue,random",
                    help="which review strategies to run: queue, random, disagree (one process per arm runs them in "
                         "parallel; an arm without queue computes its own round 0)")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip the gold-label ceiling")
    ap.add_argument("--headline", type=int, default=0, help="run the ICM-labels-vs-gold fine-tune comparison on N tasks")
    ap.add_argument("--headline-methods", default="zero-shot,random-fewshot")
    ap.add_argument("--replot", action="store_true",
                    help="run nothing: print the table and draw the plot of the existing --json file")
    args = ap.parse_args()
    if args.replot:
        try:
            res = json.loads(Path(args.json).read_text())
        except (OSError, ValueError) as exc:
            print(f"error: --json {args.json}: {exc}", file=sys.stderr)
            return 2
        if not any(a in res for a in ARMS):
            print(f"error: --json {args.json}: no review-loop results (keys {'/'.join(ARMS)}) to plot", file=sys.stderr)
            return 2
        print_table(res)
        plot_loop(res, Path(args.json).with_suffix(".png"))
        print(f"\nwrote {Path(args.json).with_suffix('.png')}")
        return 0
    if not args.data:
        ap.error("--data is required (a TSV with header text<TAB>label)")
    args.arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        from icm_backend.engine.tasks import PRESETS
        from icm_backend.finetune.prompts import label_words

        if args.task not in PRESETS:
            raise InputError(f"--task {args.task}: not one of {sorted(PRESETS)}")
        if args.task != "classify" and not args.headline:
            raise InputError(f"--task {args.task}: the review loop runs classify tasks; use --headline N for paper tasks")
        given = [w.strip() for w in args.labels.split(",") if w.strip()]
        args.task_labels = given if PRESETS[args.task].takes_labels else None
        args.labels = label_words(args.task, args.task_labels)
        if len(args.labels) < 2:
            raise InputError("--labels: need two or more label words")
        rows, gold = read_data(args.data, args.labels, args.n, args.task)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    # Torch's default threads (every core): run it alone (the CPU lock). Training picks its own and gives them
    # back (finetune.lora.train_lora).
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = out.parent / (out.stem + ".work")
    res = {"data": args.data, "n": len(rows), "rounds": args.rounds, "per_round": args.per_round, "seed": args.seed,
           "model": args.model, "max_iters": args.max_iters, "train_steps": args.train_steps,
           "label_share_gold": {w: gold.count(w) / len(gold) for w in args.labels}}
    t0 = time.monotonic()
    if args.headline:
        res["headline"] = headline(args, rows, gold, work)
    else:
        queue_loop = None
        if "queue" in args.arms:
            queue_loop = Loop(args, rows, gold, "queue", work)
            q = queue_loop.run()
            res.update({k: v for k, v in q.items()})  # the keys at the top level: the queue loop
            res["queue"] = q
        if args.random and "random" in args.arms:
            res["random"] = Loop(args, rows, gold, "random", work, round0=queue_loop).run()
        if "disagree" in args.arms:
            res["disagree"] = Loop(args, rows, gold, "disagree", work, round0=queue_loop).run()
        if any(a in res for a in ARMS):
            print_table(res)
    res["seconds_total"] = round(time.monotonic() - t0, 1)
    out.write_text(json.dumps(res, indent=1, default=str))
    print(f"\nwrote {out}")
    if not args.headline and any(a in res for a in ARMS):
        plot_loop(res, out.with_suffix(".png"))
        print(f"wrote {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
