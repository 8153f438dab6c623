"""The embedded broker: kombu's filesystem transport, with messages written atomically.

kombu's own Channel._put creates the message file under its final name and then writes it. A consumer
polling meanwhile moves the still-empty file away, fails to decode it and the worker exits (the
symptom of kombu#1551). Writing under a temporary name and renaming closes that window: a consumer
only takes files that end in `.<queue>.msg`.
"""

import os
import uuid
from time import monotonic

from kombu.transport import TRANSPORT_ALIASES, filesystem
from kombu.utils.json import dumps

SCHEME = "routerfs"


class Channel(filesystem.Channel):
    def _put(self, queue, payload, **kwargs) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        temp = f"{final}.part"
        try:
            with open(temp, "wb") as fh:
                fh.write(dumps(payload).encode())
            os.replace(temp, final)
        except OSError as exc:
            raise filesystem.ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"
