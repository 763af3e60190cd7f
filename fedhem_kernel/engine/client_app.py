"""The site side of the engine: a Flower ClientApp whose query handlers run the site executor.

One handler per site step (``query.<step>``), generated from the analysis registry. In deployment the
SuperNode's ``node_config`` names the site's config file (``data-path``); the embedded LocalGrid passes
its own resolver. Nothing but typed records crosses: an exception never escapes a handler (its text
could carry data), it becomes an error reply with a sanitised message.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedhem_kernel.analyses import SITE_STEPS
from fedhem_kernel.engine.codec import decode_request, encode_reply
from fedhem_kernel.site.config import SiteConfig
from fedhem_kernel.site.executor import CATALOG_STEP, SiteExecutor, SiteReply

Resolver = Callable[[Context], SiteExecutor]


def make_client_app(resolve: Resolver) -> ClientApp:
    app = ClientApp()

    def handler(msg: Message, context: Context) -> Message:
        executor = resolve(context)
        try:
            request = decode_request(msg.content)
        except Exception:  # noqa: BLE001 - malformed request: answer without echoing it
            reply = SiteReply(
                executor.name,
                "error",
                error={"type": "FedHemError", "reason": "malformed request", "site": executor.name},
            )
        else:
            msg.content = RecordDict()  # the step needs only the decoded request: free the bytes
            reply = executor.handle(request)
        return Message(encode_reply(reply), reply_to=msg)

    register = app.query  # Flower's handler registration (message type "query.<step>")
    for step in [CATALOG_STEP, *SITE_STEPS]:
        register(step)(handler)
    return app


@lru_cache(maxsize=16)
def _executor_for(path: str, name: str | None) -> SiteExecutor:
    return SiteExecutor.from_config(SiteConfig.from_toml(path, name=name))


def executor_from_node_config(context: Context) -> SiteExecutor:
    """Deployment: ``flower-supernode --node-config 'data-path="/data/site.toml"'``."""
    cfg = context.node_config
    name = cfg.get("site-name")
    return _executor_for(str(cfg["data-path"]), str(name) if name else None)


app = make_client_app(executor_from_node_config)
