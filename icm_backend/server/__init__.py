"""Label Studio ML backend: HTTP layer (app), project config parsing, persistent ICM jobs, LS client."""
