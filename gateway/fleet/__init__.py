"""The gateway's model servers: where they are (``discovery``), which one takes each job and
answers for it (``fleet``), and the queued jobs kept to place again if a server dies (``ledger``)."""

from gateway.fleet.discovery import discovery
from gateway.fleet.fleet import Fleet

__all__ = ["Fleet", "discovery"]
