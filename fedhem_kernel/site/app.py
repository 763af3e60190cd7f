"""The site's Flower ClientApp: one query handler per site step it is handed, running the executor.

In a deployment the SuperNode's ``node_config`` names the site's config file (``data-path``:
see :mod:`fedhem_kernel.node`, whose ``app`` is the ClientApp to give ``flower-supernode``); an
embedded host passes its own resolver. Nothing but typed records crosses: an exception never escapes
a handler (its text could carry data), it becomes an error reply with a sanitised message.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedhem_kernel.protocol.codec import decode_request, encode_reply
from fedhem_kernel.protocol.messages import SERVICE_STEPS, SiteReply
from fedhem_kernel.site.executor import SiteExecutor

Resolver = Callable[[Context], SiteExecutor]


def make_client_app(resolve: Resolver, steps: Iterable[str]) -> ClientApp:
    """A ClientApp answering ``query.<step>`` for every name in ``steps`` (and the catalog and
    audit steps every site answers) with the executor ``resolve`` picks for the node."""
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
    for step in dict.fromkeys([*SERVICE_STEPS, *steps]):
        register(step)(handler)
    return app
