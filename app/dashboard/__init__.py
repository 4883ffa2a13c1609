"""The web dashboard served at ``/``: jobs, the submit form, the loss registry."""

from app.dashboard.views import router

__all__ = ["router"]
