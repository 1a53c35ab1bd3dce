"""CLI commands, one module per area; each exposes `register(app)` (`register(data_app)` for the ones
under `mmdeploy data`)."""
