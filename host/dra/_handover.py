"""Which of a driver's instances writes its ResourceSlices during a rolling update.

With an instance id (the pod UID) two instances of one driver serve side by side on
one node while a DaemonSet rolls with ``maxSurge: 1``. Both would keep the node's pool
in sync; where their versions build different slices, each would keep rewriting the
other's. So the newest instance publishes and the older one stands by:

* ``<plugin dir>/<driver>/publisher.json`` names the instance that publishes and its
  DRA socket. Each instance writes itself there once its DRA socket listens (the
  newest one started last, so it wins), atomically.
* Before every write the publisher asks :meth:`PublisherHandover.may_publish`: yes
  when the file names this instance (or nobody); no while it names another instance
  whose DRA socket accepts connections. An instance whose socket is gone or refuses
  (it stopped, crashed, or the roll was undone) has handed back: this one publishes
  again and writes itself into the file.

The instance standing by writes nothing, not even on its way out (the slices are the
newer instance's by then), and it adopts whatever the newer one published should it
publish again: a publisher always starts from the slices it lists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PUBLISHER_FILE", "PublisherHandover", "PublisherRecord"]

log = logging.getLogger("host.dra")

PUBLISHER_FILE = "publisher.json"
"""In the driver's plugin data directory: who publishes the slices (rolling update)."""


@dataclass(frozen=True)
class PublisherRecord:
    """What ``publisher.json`` holds: an instance and the DRA socket it serves."""

    instance_id: str
    socket: str


def _socket_accepts(path: str) -> bool:
    """Whether something listens on the Unix socket ``path`` (a connect succeeds)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        try:
            probe.connect(path)
        except BlockingIOError:
            return True  # EAGAIN: a full backlog, someone listens
        except OSError:
            return False  # ENOENT, ECONNREFUSED: nobody does
    return True


class PublisherHandover:
    """The handover of one driver's slices between its instances (blocking file I/O).

    ``data_dir`` is the driver's plugin data directory, shared by its instances;
    ``instance_id`` and ``socket_path`` are this instance's. Call the methods through
    ``asyncio.to_thread``.
    """

    def __init__(self, data_dir: str | Path, instance_id: str, socket_path: str | Path) -> None:
        self.path = Path(data_dir) / PUBLISHER_FILE
        self.me = PublisherRecord(instance_id, str(socket_path))

    def __repr__(self) -> str:
        return f"PublisherHandover({str(self.path)!r}, {self.me.instance_id!r})"

    def read(self) -> PublisherRecord | None:
        """Return the instance the file names; None when there is no usable file."""
        try:
            data = json.loads(self.path.read_bytes())
            return PublisherRecord(str(data["instance"]), str(data["socket"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as err:
            log.warning("DRA: ignoring unreadable %s: %s", self.path, err)
            return None

    def claim(self) -> None:
        """Name this instance as the publisher (atomically; OSError names the file)."""
        payload = json.dumps({"instance": self.me.instance_id, "socket": self.me.socket})
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(payload + "\n")
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def may_publish(self) -> bool:
        """Whether this instance writes the slices now (see the module docstring).

        Taking over from an instance that is gone names this one in the file.
        """
        owner = self.read()
        if owner is None or owner == self.me:
            return True
        if _socket_accepts(owner.socket):
            return False
        log.info(
            "DRA: instance %s (%s) no longer serves; instance %s publishes the "
            "ResourceSlices again",
            owner.instance_id,
            owner.socket,
            self.me.instance_id,
        )
        try:
            self.claim()
        except OSError as err:
            log.warning("DRA: cannot write %s: %s", self.path, err)
        return True
