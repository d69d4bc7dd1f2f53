"""A Django app: ``manage.py runserver`` serves WebSockets too.

Put ``"wsgi_channels.django"`` first in ``INSTALLED_APPS`` (before
``django.contrib.staticfiles``, whose ``runserver`` it extends). It brings three
commands: ``runserver`` (the interface server and a worker in one process, with Django's
autoreload and, under ``DEBUG``, its static files), ``runworker`` and ``runinterface``.
Each reads the ``WSGI_CHANNELS_LAYER`` setting when neither ``--layer`` nor the
environment variable names a layer.
"""
