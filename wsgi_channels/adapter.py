"""Pure translation between channel messages and WSGI (no I/O).

The worker helper fills this module in; the constants below are shared with the
interface server and documented in docs/protocol.md.
"""

from __future__ import annotations

EXT_KEY = "wsgi_channels.ext"
DEADLINE_KEY = "wsgi_channels.deadline"
CONTROL_KEY = "wsgi_channels.control"
DONE_KEY = "wsgi_channels.done"
DISCONNECT_TYPE = "http.disconnect"

INTERFACE_PREFIX = "wsgi_channels.interface."
WORKER_PREFIX = "wsgi_channels.worker."
BODY_CHANNEL_PATTERN = "http.request.body?"
INLINE_BODY_LIMIT = 256 * 1024
BODY_CHUNK_SIZE = 256 * 1024
