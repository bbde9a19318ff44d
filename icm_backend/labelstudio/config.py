"""Read a Label Studio project's labeling config into what ICM needs: a task preset + field mapping.

The backend never assumes field names blindly: it reads the control tags (Choices / Pairwise), their
`toName`, and the `$variables` of the object tags they point at. Hidden fields that a config does not
display (group id, answer key) are read from task data under the names in FIELD_ALIASES.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from icm_backend.errors import InputError

# Task data keys the backend reads, first match wins. Documented in docs/label_studio.md.
FIELD_ALIASES = {
    "question": ("question", "prompt", "query", "context"),
    "choice": ("choice", "claim", "response", "answer_text"),
    "choice_2": ("choice_2", "response_2", "choice2"),
    "consistency_id": ("consistency_id", "group_id", "group"),
    "answer": ("answer", "answer_key", "key"),
}
TEXT_TAGS = {"Text", "HyperText", "Paragraphs", "Header"}
REVIEW_CHOICE_NAMES = {"needs_review", "review"}
REVIEW_VALUE = "needs review"
REVIEW_WORDS = {"needs review", "needs_review", "needs-review"}  # a Choice with one of these is the review flag


class LabelConfigError(InputError):
    """The project's label config cannot drive ICM; the message names the tag/attribute at fault."""


@dataclass
class ReviewBlock:
    choices_name: str | None = None  # <Choices name="needs_review"> holding one "needs review" choice
    choice_value: str = REVIEW_VALUE
    reason_name: str | None = None  # <TextArea name="review_reason">
    to_name: str = ""


@dataclass
class ProjectSpec:
    task: str  # "classify" | "claims" | "comparison"
    labels: list[str]  # label words ICM chooses between ("True"/"False" for claims and comparison)
    from_name: str  # control tag name that predictions fill
    to_name: str
    control_type: str  # "choices" | "pairwise"
    choice_values: list[str] = field(default_factory=list)  # the config's own Choice values (case kept)
    fields: dict[str, str] = field(default_factory=dict)  # ICM row field -> task data key
    review: ReviewBlock = field(default_factory=ReviewBlock)

    @property
    def has_review(self) -> bool:
        return bool(self.review.choices_name or self.review.reason_name)


def _var(value: str | None) -> str | None:
    if value and value.startswith("$"):
        return value[1:]
    return None


def _alias_in(var: str | None, key: str) -> bool:
    return var is not None and var in FIELD_ALIASES[key]


def parse_label_config(xml: str) -> ProjectSpec:
    if not isinstance(xml, str) or not xml.strip():
        raise LabelConfigError("label_config: empty; expected a Label Studio <View> config")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise LabelConfigError(f"label_config: not valid XML ({exc})") from exc

    objects: dict[str, tuple[str, str | None]] = {}  # name -> (tag, $var)
    choices, pairwise, textareas = [], [], []
    for el in root.iter():
        name = el.get("name")
        if el.tag in TEXT_TAGS and name:
            objects[name] = (el.tag, _var(el.get("value")))
        elif el.tag == "Choices":
            choices.append(el)
        elif el.tag == "Pairwise":
            pairwise.append(el)
        elif el.tag == "TextArea":
            textareas.append(el)

    review = ReviewBlock()
    main_choices = []
    for el in choices:
        values = [c.get("value") or c.get("alias") or "" for c in el.iter("Choice")]
        hit = next((v for v in values if v.strip().casefold() in REVIEW_WORDS), None)
        if review.choices_name is None and (hit or el.get("name") in REVIEW_CHOICE_NAMES):
            review.choices_name = el.get("name")
            review.choice_value = hit or (values[0] if values else REVIEW_VALUE)
            review.to_name = el.get("toName", "")
        else:
            main_choices.append((el, values))
    for el in textareas:
        if "reason" in (el.get("name") or "") or "review" in (el.get("name") or ""):
            review.reason_name = el.get("name")
            review.to_name = review.to_name or el.get("toName", "")

    # Every $field the config shows, named or not (a <Header value="$question"/> has no name).
    all_vars = {_var(el.get("value")) for el in root.iter() if _var(el.get("value"))}

    def pick(key: str) -> str | None:
        return next((a for a in FIELD_ALIASES[key] if a in all_vars), None)

    if pairwise:
        el = pairwise[0]
        to_names = [t.strip() for t in (el.get("toName") or "").split(",") if t.strip()]
        if len(to_names) != 2 or any(t not in objects or not objects[t][1] for t in to_names):
            raise LabelConfigError(
                f"label_config: <Pairwise name={el.get('name')!r}> needs toName naming two <Text> tags "
                "with $fields (e.g. toName=\"left,right\")")
        fields = {"choice": objects[to_names[0]][1], "choice_2": objects[to_names[1]][1]}
        if pick("question"):
            fields["question"] = pick("question")
        review.to_name = review.to_name or to_names[0]
        # LS stores pairwise results with to_name == the Pairwise tag's own name.
        return ProjectSpec(task="comparison", labels=["True", "False"], from_name=el.get("name"),
                           to_name=el.get("name"), control_type="pairwise", fields=fields, review=review)

    if not main_choices:
        raise LabelConfigError(
            "label_config: no <Choices> or <Pairwise> control to predict (a <Choices> over a <Text> is needed)")
    el, values = main_choices[0]
    to_name = el.get("toName") or ""
    target = objects.get(to_name.split(",")[0])
    if not target or not target[1]:
        raise LabelConfigError(
            f"label_config: <Choices name={el.get('name')!r}> toName={to_name!r} must point at a <Text> tag "
            "with value=\"$field\" (images, audio and other objects are not supported)")
    values = [v for v in values if v]
    if len(values) < 2:
        raise LabelConfigError(f"label_config: <Choices name={el.get('name')!r}> needs at least two <Choice> values")
    if len(set(values)) != len(values):
        raise LabelConfigError(f"label_config: <Choices name={el.get('name')!r}> has duplicate <Choice> values")
    review.to_name = review.to_name or to_name
    target_var = target[1]
    # A True/False verdict over a claim (field named choice/claim, or a separate question shown) is
    # claim verification; anything else is plain multi-class classification over the text.
    if sorted(v.lower() for v in values) == ["false", "true"] and (
            _alias_in(target_var, "choice") or (pick("question") and pick("question") != target_var)):
        fields = {"choice": target_var}
        if pick("question") and pick("question") != target_var:
            fields["question"] = pick("question")
        true_v = next(v for v in values if v.lower() == "true")
        false_v = next(v for v in values if v.lower() == "false")
        return ProjectSpec(task="claims", labels=["True", "False"], from_name=el.get("name"), to_name=to_name,
                           control_type="choices", choice_values=[true_v, false_v], fields=fields, review=review)
    return ProjectSpec(task="classify", labels=values, from_name=el.get("name"), to_name=to_name,
                       control_type="choices", choice_values=values,
                       fields={"text": target_var}, review=review)
