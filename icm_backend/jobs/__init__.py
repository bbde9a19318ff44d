"""Background work and what it keeps: the job queue and its runner, the prediction cache and the
projects' settings, each its own table in one SQLite file under MODEL_DIR."""
