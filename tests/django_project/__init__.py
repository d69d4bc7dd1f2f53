"""A small Django project for tests/test_frameworks.py: sessions, CSRF, auth, admin, and a
view that accepts WebSocket events through the worker."""
