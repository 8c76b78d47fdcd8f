"""Run the service under uvicorn: httptools and uvloop when installed, no access log, no proxy-header rewriting
(the service binds loopback by default; a proxy in front terminates client addresses itself)."""

from __future__ import annotations

import importlib.util
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import Any

from mlplatform.lib.api_tokens import exposure_warning
from mlplatform.serving.app import ServingConfig, create_app


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    graceful_seconds: float = 30.0
    drain_seconds: float = 0.0


def uvicorn_choices() -> dict[str, str]:
    """The fastest HTTP parser and event loop that are installed (both optional extras of uvicorn)."""
    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    return {"http": http, "loop": loop}


def uvicorn_config(config: ServingConfig, options: ServerOptions):
    import uvicorn

    return uvicorn.Config(create_app(config), host=options.host, port=options.port, access_log=False,
                          log_level=options.log_level, timeout_graceful_shutdown=options.graceful_seconds,
                          lifespan="on", proxy_headers=False, **uvicorn_choices())


def draining_server(config: Any, drain_seconds: float, start_draining: Callable[[], None]) -> Any:
    """A uvicorn server that, on SIGTERM, first drains for ``drain_seconds``: ``start_draining`` makes /ready
    answer 503 so a balancer (haproxy, a cloud load balancer) takes the replica out, requests already routed here
    are still answered, and only then does the graceful shutdown close the listener. Without the drain, a request
    on a kept-alive connection can meet the closing socket, and a POST is not retried by the balancer.
    SIGINT (Ctrl-C) and a second SIGTERM stop at once."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        draining = False

        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGTERM and drain_seconds > 0 and not self.draining:
                self.draining = True
                start_draining()
                logging.getLogger(__name__).warning("SIGTERM: draining for %.1f s, then stopping", drain_seconds)
                timer = threading.Timer(drain_seconds, uvicorn.Server.handle_exit, args=(self, sig, frame))
                timer.daemon = True
                timer.start()
                return
            super().handle_exit(sig, frame)

    return DrainingServer(config)


def serve(config: ServingConfig, options: ServerOptions) -> None:
    """Serve until SIGINT/SIGTERM; shutdown (after the drain, if any) finishes in-flight requests and flushes the
    prediction log."""
    logging.basicConfig(level=getattr(logging, options.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    exposed = exposure_warning(options.host, config.api_tokens)
    if exposed:
        logging.getLogger("mlplatform.serving").warning(exposed)
    uvicorn_settings = uvicorn_config(config, options)
    front = uvicorn_settings.app

    def start_draining() -> None:
        front.runtime.draining = True

    draining_server(uvicorn_settings, options.drain_seconds, start_draining).run()


def select_specs(specs: Sequence, names: Sequence[str] | None) -> list:
    """The specs to serve: all, or those named (unknown names raise ValueError listing what exists)."""
    if not names:
        return list(specs)
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"no model spec named {', '.join(map(repr, unknown))}; specs: {', '.join(sorted(by_name))}")
    return [by_name[n] for n in dict.fromkeys(names)]
