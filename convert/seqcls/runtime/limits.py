"""Server defaults, kept apart from server.py so the CLI can show them without importing FastAPI."""

DEFAULT_MAX_DOCUMENTS = 1000
DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_CONCURRENT = 512
DEFAULT_BATCH_WINDOW_MS = 2.0
