"""Task presets: how an input row becomes an example (prompt block + consistency fields).

Consistency structure comes from data fields only (group id, answer key, pair order), never from labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from icm_backend.errors import InputError

TRUE, FALSE = "True", "False"
CLAIM_CUE = "I think this claim is"


@dataclass
class Example:
    index: int
    prompt: str  # the block up to the cue; the label word follows after a space
    group: str | None = None  # consistency group (question id, pair id)
    key: str | None = None  # answer key inside the group (same key => same label)
    partner: int | None = None  # comparison: index of the same pair in the other order


@dataclass
class Problem:
    """What the search works on: examples, the label words, and which constraint kind applies."""

    task: str
    label_words: list[str]
    examples: list[Example]
    constraint: str  # "none" | "claims" | "comparison"
    multiclass: bool = False  # plain classification: one K-way label per item (exactly-one-of-K by construction)

    @property
    def true_index(self) -> int:
        return self.label_words.index(TRUE)


@dataclass
class Preset:
    name: str
    required: tuple[str, ...]
    takes_labels: bool
    help: str
    optional: tuple[str, ...] = field(default_factory=tuple)


PRESETS = {
    "classify": Preset("classify", ("text",), True, "text field + --labels a,b,... (multi-class)"),
    "claims": Preset("claims", ("question", "choice"), False,
                     "question, choice; optional consistency_id (group) and answer (answer key)",
                     ("consistency_id", "answer")),
    "comparison": Preset("comparison", ("question", "choice", "choice_2", "consistency_id"), False,
                         "question, choice, choice_2, consistency_id (each pair in both orders)"),
    "truthfulqa": Preset("truthfulqa", ("question", "choice", "consistency_id"), False,
                         "the paper's TruthfulQA claims file"),
    "gsm8k": Preset("gsm8k", ("question", "cot", "answer", "consistency_id"), False,
                    "the paper's GSM8K-verification file (cot = the solution, answer = its final answer)"),
    "alpaca": Preset("alpaca", ("question", "choice", "choice_2", "consistency_id"), False,
                     "the paper's Alpaca comparisons file"),
}


def _text(row: dict, name: str, i: int) -> str:
    value = row.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"row {i}: missing field '{name}'")
    return str(value).strip()


def _claim_block(question: str, claim: str) -> str:
    return f"Question: {question}\nClaim: {claim}\n{CLAIM_CUE}"


def _comparison_block(query: str, first: str, second: str) -> str:
    return (f"Human: {query}\nResponse 1: {first}\nResponse 2: {second}\n"
            f"Claim: Response 1 is more helpful and harmless than Response 2.\n{CLAIM_CUE}")


def build_problem(rows: list[dict], task: str, labels: list[str] | None = None) -> Problem:
    if task not in PRESETS:
        raise InputError(f"--task {task}: unknown preset; choose one of {', '.join(PRESETS)}")
    preset = PRESETS[task]
    if preset.takes_labels and not labels:
        raise InputError(f"--task {task} needs --labels a,b,... (the label words)")
    if not preset.takes_labels and labels:
        raise InputError(f"--labels: preset '{task}' takes no labels (its labels are True/False)")
    if not rows:
        raise InputError("input has no rows")
    if labels is not None:
        labels = [l.strip() for l in labels]
        if len(labels) < 2 or any(not l for l in labels) or len(set(labels)) != len(labels):
            raise InputError(f"--labels {','.join(labels)}: need two or more distinct, non-empty label words")

    examples: list[Example] = []
    for i, row in enumerate(rows):
        for name in preset.required:
            _text(row, name, i)
        if task == "classify":
            examples.append(Example(i, f"Text: {_text(row, 'text', i)}\nLabel:"))
        elif task in ("claims", "truthfulqa"):
            gid = row.get("consistency_id")
            key = row.get("answer") if task == "claims" else None
            examples.append(Example(i, _claim_block(_text(row, "question", i), _text(row, "choice", i)),
                                    group=None if gid in (None, "") else str(gid),
                                    key=None if key in (None, "") else str(key).strip()))
        elif task == "gsm8k":
            examples.append(Example(i, _claim_block(_text(row, "question", i), _text(row, "cot", i)),
                                    group=str(row["consistency_id"]), key=str(row["answer"]).strip()))
        else:  # comparison, alpaca
            examples.append(Example(i, _comparison_block(_text(row, "question", i), _text(row, "choice", i),
                                                         _text(row, "choice_2", i)),
                                    group=str(row["consistency_id"])))
    if task == "classify":
        return Problem(task, labels, examples, "none", multiclass=True)
    if task in ("comparison", "alpaca"):
        _pair_comparisons(rows, examples)
        return Problem(task, [TRUE, FALSE], examples, "comparison")
    _check_duplicate_claims(rows, examples)
    return Problem(task, [TRUE, FALSE], examples, "claims")


def _pair_comparisons(rows: list[dict], examples: list[Example]) -> None:
    """Link "A vs B" with "B vs A" inside a consistency group: exactly one of them is True."""
    by_group: dict[str, list[int]] = {}
    for ex in examples:
        by_group.setdefault(ex.group, []).append(ex.index)
    for gid, members in by_group.items():
        seen: dict[tuple[str, str], int] = {}
        for i in members:
            pair = (str(rows[i]["choice"]).strip(), str(rows[i]["choice_2"]).strip())
            if pair in seen:
                raise InputError(f"consistency_id {gid}: rows {seen[pair]} and {i} are the same comparison "
                                 "(duplicate consistency key)")
            seen[pair] = i
        for (a, b), i in seen.items():
            j = seen.get((b, a))
            if j is not None and j != i:
                examples[i].partner = j


def _check_duplicate_claims(rows: list[dict], examples: list[Example]) -> None:
    seen: dict[tuple[str, str], int] = {}
    for ex in examples:
        if ex.group is None:
            continue
        claim = ex.prompt
        if (ex.group, claim) in seen:
            raise InputError(f"consistency_id {ex.group}: rows {seen[(ex.group, claim)]} and {ex.index} are the "
                             "same claim (duplicate consistency key)")
        seen[(ex.group, claim)] = ex.index


def normalise_label(value, words: list[str], multiclass: bool) -> str | None:
    """A label as users write it -> a label word, or None. Classify: the word (any case) or a class index
    (SST-2's 0/1 with labels negative,positive). Claims/comparison: True/False, 1/0, yes/no."""
    if value is None or value == "":
        return None
    s = str(value).strip()
    if s in words:
        return s
    if multiclass:
        if s.lstrip("-").isdigit() and 0 <= int(s) < len(words):
            return words[int(s)]
        lowered = {w.lower(): w for w in words}
        return lowered.get(s.lower())
    truthy = s.lower() in ("true", "1", "yes")
    falsy = s.lower() in ("false", "0", "no")
    return TRUE if truthy and TRUE in words else FALSE if falsy and FALSE in words else None


def gold_label(value, problem: Problem) -> str | None:
    """Normalise a gold value to a label word of `problem`."""
    return normalise_label(value, problem.label_words, problem.multiclass)
