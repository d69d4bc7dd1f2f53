"""Benchmarks of wsgi-channels against gunicorn and channels_redis; see README.md."""
