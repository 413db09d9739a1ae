"""Shadows the standard library module of the same name: the app's own
modules come first on its import path (`/shadow` in app.py)."""

WHOSE = "the app's"
