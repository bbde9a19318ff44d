"""What the fine-tune feature adds to a server: the "train" job kind and the webhook events that
queue it. The server's app factory (icm_backend.server.app.create_app) registers these; this package
never imports the server."""

from icm_backend.finetune.job import TrainJob
from icm_backend.finetune.trigger import ANNOTATION_EVENTS, START_TRAINING, TRAIN_KIND, on_training_event

# kind -> factory(backend) -> handler(JobContext) -> final message
JOB_KINDS = {TRAIN_KIND: TrainJob}
# (webhook action, handler(payload, backend))
EVENT_HANDLERS = tuple((action, on_training_event) for action in (START_TRAINING, *ANNOTATION_EVENTS))
