"""The Label Studio ML backend's HTTP side: routes (app), the /predict decision (service), the loaded model
(model_host), the whole-project ICM job (icm_job), settings from the environment (config), webhook events
(events), metrics and safe logging (logsafe). Label Studio's shapes and its client are in labelstudio/,
the job queue and stores in jobs/."""
