"""The studio's mesh contract: what `make status` and other services may ask it.

Usage:
    from services.studio.api import CONTRACT as STUDIO
    c = Client("tcp://127.0.0.1:5555", contract=STUDIO)
    c.call("status", STUDIO.request("status"))      # {url, services, <status>: count}

The page itself is HTTP (services/studio/README.md); the mesh side only reports. `info`
carries `url` (the page) like every service's info carries its capabilities.
"""

from __future__ import annotations

from protocol.contract import Contract, Op
from protocol.schema import message


@message
class StatusReq:
    pass


@message
class StatusReply:
    url: str  # the page, e.g. http://127.0.0.1:8555/
    services: dict[str, bool]  # reader / sam / exporter answering ping
    episodes: dict[str, int]  # episodes per status (new, prompted, propagated, approved, ...)


CONTRACT = Contract("studio", [Op("status", StatusReq, StatusReply, idempotent=True)])
STUDIO = CONTRACT
