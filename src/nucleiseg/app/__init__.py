"""Web app: ``create_app`` in :mod:`nucleiseg.app.server` (FastAPI), served by ``nucleiseg serve``."""
