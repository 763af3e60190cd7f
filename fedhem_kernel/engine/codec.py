"""Typed Flower records for FedHem requests and replies.

A request or reply is a small JSON document (``ConfigRecord`` key ``doc``, with a protocol version)
whose numpy arrays travel in an ``ArrayRecord`` and are referenced from the document by key. Decoding
is strict: an unknown protocol version or a missing field raises.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from io import BytesIO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict
from flwr.common.constant import SType
from numpy.lib import format as npy_format

from fedhem_kernel.site.executor import SiteReply, SiteRequest

PROTOCOL = 1
_ARRAY_TAG = "__ndarray__"


_NPY_MAGIC = b"\x93NUMPY\x01\x00"  # .npy format 1.0
#: Parsed .npy headers (dtype, shape, order) by their text: a fit sends the same shapes each round.
_npy_headers: dict[bytes, tuple[tuple[int, ...], bool, np.dtype]] = {}


def to_array(value: np.ndarray) -> Array:
    """``Array(value)``: the same ``.npy`` bytes as ``np.save`` writes, but the data copied once
    (``np.save`` to a buffer copies it in chunks, then again out of the buffer)."""
    arr = np.ascontiguousarray(value)
    head = BytesIO()
    try:
        npy_format.write_array_header_1_0(head, npy_format.header_data_from_array_1_0(arr))
    except ValueError:  # a header too long for format 1.0
        return Array(arr)
    if arr.dtype.hasobject:
        return Array(arr)
    data = b"".join((head.getvalue(), arr.reshape(-1).view(np.uint8)))
    return Array(dtype=str(arr.dtype), shape=tuple(arr.shape), stype=SType.NUMPY, data=data)


def from_array(array: Array) -> np.ndarray:
    """``array.numpy()``: a new array read straight from the bytes (``np.load`` parses the header
    with ``ast.literal_eval`` and reads the data in small chunks)."""
    data = array.data
    if array.stype != SType.NUMPY or not data.startswith(_NPY_MAGIC):
        return array.numpy()
    size = int.from_bytes(data[8:10], "little")
    header = data[10 : 10 + size]
    parsed = _npy_headers.get(header)
    if parsed is None:
        parsed = npy_format.read_array_header_1_0(BytesIO(data[8 : 10 + size]))
        if len(_npy_headers) < 1024:
            _npy_headers[header] = parsed
    shape, fortran_order, dtype = parsed
    if dtype.hasobject:
        return array.numpy()
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=10 + size)
    return flat.reshape(shape, order="F" if fortran_order else "C").copy(order="K")


def _pack(obj: Any, arrays: dict[str, Array]) -> Any:
    if isinstance(obj, np.ndarray):
        key = f"a{len(arrays)}"
        arrays[key] = to_array(obj)
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
            return from_array(arrays[obj[_ARRAY_TAG]])
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
