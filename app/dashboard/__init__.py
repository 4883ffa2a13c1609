"""The web dashboard served at ``/``: jobs, the submit form, the loss registry."""

from .views import router

__all__ = ["router"]
