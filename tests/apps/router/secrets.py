"""Shadows a standard library module the adapter imports ahead of the app
(`LAZY_STDLIB` in guest/rsgi_wasm_guest/boot.py): `/shadow` in app.py."""

WHOSE = "the app's"
