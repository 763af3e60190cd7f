"""Typed Flower records for FedHem requests and replies.

A request or reply is a small JSON document (``ConfigRecord`` key ``doc``, with a protocol version)
whose numpy arrays travel in an ``ArrayRecord`` and are referenced from the document by key. Decoding
is strict: an unknown protocol version or a missing field raises.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from fedhem_kernel.site.executor import SiteReply, SiteRequest

PROTOCOL = 1
_ARRAY_TAG = "__ndarray__"


def _pack(obj: Any, arrays: dict[str, Array]) -> Any:
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = Array(np.ascontiguousarray(obj))
        return {_ARRAY_TAG: key}
    if isinstance(obj, dict):
        return {str(k): _pack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_pack(v, arrays) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _unpack(obj: Any, arrays: ArrayRecord | None) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {_ARRAY_TAG}:
            if arrays is None:
                raise ValueError("record references an array but carries none")
            return arrays[obj[_ARRAY_TAG]].numpy()
        return {k: _unpack(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_unpack(v, arrays) for v in obj]
    return obj


def to_records(kind: str, doc: dict[str, Any]) -> RecordDict:
    arrays: dict[str, Array] = {}
    packed = _pack(doc, arrays)
    content = RecordDict(
        {"meta": ConfigRecord({"protocol": PROTOCOL, "kind": kind, "doc": json.dumps(packed)})}
    )
    if arrays:
        content["arrays"] = ArrayRecord(arrays)
    return content


def from_records(kind: str, content: RecordDict) -> dict[str, Any]:
    meta = content["meta"]
    if meta["protocol"] != PROTOCOL or meta["kind"] != kind:
        raise ValueError(f"unexpected FedHem record (protocol {meta['protocol']}, {meta['kind']})")
    arrays = content["arrays"] if "arrays" in content else None
    return _unpack(json.loads(str(meta["doc"])), arrays)


def encode_request(req: SiteRequest) -> RecordDict:
    return to_records("request", asdict(req))


def decode_request(content: RecordDict) -> SiteRequest:
    doc = from_records("request", content)
    return SiteRequest(**doc)


def encode_reply(reply: SiteReply) -> RecordDict:
    return to_records("reply", asdict(reply))


def decode_reply(content: RecordDict) -> SiteReply:
    return SiteReply(**from_records("reply", content))
