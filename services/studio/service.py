"""The studio as a mesh service: answers ping/info (so `make status` lists it) and serves the page.

Usage:
    python -m services.studio --config configs/services.yaml
    # in code: svc = build_service("http", {"buffer": ..., "pipeline": ..., "output": ...})

`build_service` binds the HTTP port at once (so a port in use fails the start) and serves it
from a thread; `info` reports the page's `url`. A non-loopback HTTP bind is refused unless
annotators with tokens exist and open registration is off.
"""

from __future__ import annotations

import logging
import threading

from protocol.server import Service
from services.studio import __version__
from services.studio.api import CONTRACT
from services.studio.app import App
from services.studio.http import make_server
from services.studio.options import StudioOptions

log = logging.getLogger(__name__)
BACKENDS = ("http",)


def build_service(backend: str, options: dict) -> Service:
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r}: unknown; the studio's backends are {BACKENDS}")
    opts = StudioOptions.from_options(options)
    app = App(opts)
    if not opts.loopback():
        if app.open_registration or app.store.n_annotators() == 0:
            app.close()
            raise ValueError(
                f"http: {opts.http} is not a loopback address; the studio serves beyond this "
                "machine only with tokens: add annotators (python -m services.studio.admin "
                f"add NAME --state {opts.state_dir}) and set open_registration: false"
            )
    host, port = opts.http_addr()
    server = make_server(app, host, port)
    url = f"http://{host}:{server.server_address[1]}/"
    thread = threading.Thread(target=server.serve_forever, name="studio-http", daemon=True)
    thread.start()
    log.info("studio page at %s (buffer %s, pipeline %s, output %s, state %s)", url,
             opts.buffer, opts.pipeline, opts.output, opts.state_dir)  # fmt: skip
    print(f"STUDIO {url}", flush=True)
    svc = Service("studio", backend=backend, version=__version__,
                  capabilities={"url": url, "http": True}, workers=1, contract=CONTRACT)  # fmt: skip

    @svc.op("status")
    def status(req) -> dict:
        return {"url": url, "services": app.health(), "episodes": app.store.stats()["status"]}

    svc.add_info(lambda: {"url": url, "annotators": app.store.n_annotators()})

    def stop() -> None:
        server.shutdown()
        server.server_close()
        app.close()

    svc.on_close(stop)
    return svc
