"""Run the service under uvicorn: httptools and uvloop when installed, no access log, no proxy-header rewriting
(the service binds loopback by default; a proxy in front terminates client addresses itself)."""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from mlplatform.serving.app import ServingConfig, create_app


@dataclass(frozen=True)
class ServerOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    graceful_seconds: float = 30.0


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


def serve(config: ServingConfig, options: ServerOptions) -> None:
    """Serve until SIGINT/SIGTERM; shutdown finishes in-flight requests and flushes the prediction log."""
    import uvicorn

    logging.basicConfig(level=getattr(logging, options.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.Server(uvicorn_config(config, options)).run()


def select_specs(specs: Sequence, names: Sequence[str] | None) -> list:
    """The specs to serve: all, or those named (unknown names raise ValueError listing what exists)."""
    if not names:
        return list(specs)
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise ValueError(f"no model spec named {', '.join(map(repr, unknown))}; specs: {', '.join(sorted(by_name))}")
    return [by_name[n] for n in dict.fromkeys(names)]
