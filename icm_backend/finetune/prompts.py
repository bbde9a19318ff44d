"""Training examples in exactly the format the engine scores at inference: the prompt block up to the
cue, then " <label word>". The block comes from the engine's own `icm_backend.engine.tasks.build_problem`, so
training and serving cannot drift apart."""

from __future__ import annotations

from icm_backend.engine.tasks import PRESETS, build_problem


def prompt_renderer(task: str, labels: list[str]):
    """row -> prompt ending at the cue (no trailing space; the label token carries the space)."""
    takes_labels = PRESETS[task].takes_labels if task in PRESETS else True

    def render(row: dict) -> str:
        # One row at a time: group checks (duplicate claims) are about labelling, not about training.
        return build_problem([row], task, labels if takes_labels else None).examples[0].prompt

    return render


def label_words(task: str, labels: list[str] | None) -> list[str]:
    """The label words a preset scores: --labels for classify, True/False for the others."""
    if task in PRESETS and not PRESETS[task].takes_labels:
        return ["True", "False"]
    if not labels:
        from icm_backend.errors import InputError

        raise InputError(f"--task {task} needs --labels a,b,... (the label words)")
    return list(labels)
