"""A Channels 4 project of one echo consumer, the WebSocket baseline of ``ws_echo``:
``uvicorn benchmarks.channels_echo.asgi:application`` with channels_redis on the Redis
URL in ``CHANNELS_ECHO_REDIS``."""
