"""Django settings of the Channels echo project (no database, no apps but channels)."""

import os

SECRET_KEY = "benchmark-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["channels"]
ROOT_URLCONF = "benchmarks.channels_echo.urls"
ASGI_APPLICATION = "benchmarks.channels_echo.asgi.application"
DATABASES: dict[str, object] = {}
USE_TZ = True
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": [
                {
                    "address": os.environ.get("CHANNELS_ECHO_REDIS", "redis://127.0.0.1:1/0"),
                    # channels_redis blocks 5 s in BZPOPMIN; with redis-py 8 the read can
                    # time out at the same moment and end the consumer (a closed socket).
                    "socket_timeout": 30,
                }
            ]
        },
    }
}
