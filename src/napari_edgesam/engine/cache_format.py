"""The disk cache's entry format, version 2 (see :mod:`.cache`)::

    b"NESCACHE2\\n" | uint32 LE header length | JSON header | payloads | blake2b-256 digest

The JSON header holds the key and the arrays' ``{"name", "dtype", "orig_dtype", "shape",
"nbytes"}``; the digest covers everything before it.
"""

from __future__ import annotations

import hashlib
import json
import struct
import time

import numpy as np

__all__ = ["MAGIC", "OLD_MAGICS", "decode_entry", "encode_entry"]

MAGIC = b"NESCACHE2\n"
#: The first format (float16 payload, one array): dropped when met.
OLD_MAGICS = (b"NESCACHE1\n",)
_DIGEST_SIZE = 32
_LEN = struct.Struct("<I")


def encode_entry(key: str, arrays: dict, disk_dtype=None) -> bytes:
    """The bytes of a disk entry (format version 2) holding ``arrays`` under ``key``.

    Parameters
    ----------
    key : str
    arrays : dict
        Name -> ndarray, stored in this order.
    disk_dtype : numpy.dtype, optional
        dtype of floating-point payloads on disk (None: each array's own).
    """
    specs, payloads = [], []
    for name, arr in arrays.items():
        arr = np.asarray(arr)
        stored = arr
        if disk_dtype is not None and arr.dtype.kind == "f" \
                and arr.dtype != disk_dtype:
            limit = np.finfo(disk_dtype).max
            with np.errstate(invalid="ignore"):
                overflow = bool(np.any(np.isfinite(arr) & (np.abs(arr) > limit)))
            if not overflow:  # finite values beyond float16's range would become inf
                stored = arr.astype(disk_dtype)
        stored = np.ascontiguousarray(stored)
        specs.append({"name": str(name), "dtype": stored.dtype.str,
                      "orig_dtype": arr.dtype.str, "shape": list(arr.shape),
                      "nbytes": int(stored.nbytes)})
        payloads.append(stored.tobytes())
    header = json.dumps({"key": key, "version": 2, "arrays": specs,
                         "created": time.time()}, separators=(",", ":")).encode("utf-8")
    body = MAGIC + _LEN.pack(len(header)) + header + b"".join(payloads)
    return body + hashlib.blake2b(body, digest_size=_DIGEST_SIZE).digest()


def decode_entry(key: str, data: bytes) -> dict | None:
    """Parse a disk entry: name -> read-only ndarray, or ``None`` when it is corrupt,
    truncated, of the first format or for another key."""
    n0 = len(MAGIC) + _LEN.size
    if len(data) < n0 + _DIGEST_SIZE or not data.startswith(MAGIC):
        return None
    body, digest = data[:-_DIGEST_SIZE], data[-_DIGEST_SIZE:]
    if hashlib.blake2b(body, digest_size=_DIGEST_SIZE).digest() != digest:
        return None
    (hlen,) = _LEN.unpack_from(body, len(MAGIC))
    try:
        header = json.loads(body[n0:n0 + hlen].decode("utf-8"))
        if header["key"] != key:
            return None
        out, pos = {}, n0 + hlen
        for spec in header["arrays"]:
            n = int(spec["nbytes"])
            payload = body[pos:pos + n]
            pos += n
            if len(payload) != n:
                return None
            arr = np.frombuffer(payload, dtype=np.dtype(spec["dtype"]))
            arr = arr.reshape(tuple(int(s) for s in spec["shape"]))
            arr = arr.astype(np.dtype(spec["orig_dtype"]), copy=True)
            arr.flags.writeable = False
            out[spec["name"]] = arr
        if pos != len(body):
            return None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None
    return out
