"""Hooks the fine-tune feature into the HTTP server (imported by icm_backend.server.app at start-up):
job kind "train" and the webhook events that queue it."""

from icm_backend.finetune.job import TrainJob
from icm_backend.finetune.trigger import ANNOTATION_EVENTS, START_TRAINING, TRAIN_KIND, on_training_event
from icm_backend.server.events import on_event
from icm_backend.server.service import register_job_kind

register_job_kind(TRAIN_KIND, TrainJob)
for _action in (START_TRAINING, *ANNOTATION_EVENTS):
    on_event(_action, on_training_event)
