"""Example applications for wsgi-channels; run them from the repository's root, e.g.
``wsgi-channels run examples.flask_app:app``."""
