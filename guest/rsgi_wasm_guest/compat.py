"""Stand-ins for stdlib functions CPython for WASI lacks, so apps run
unchanged.

``hashlib.pbkdf2_hmac`` exists only when CPython is linked with OpenSSL,
which the WASI build is not; Django's default password hasher needs it.
This implements RFC 8018 §5.2 on top of ``hmac`` (the built-in SHA-2
modules), slower than OpenSSL but correct.

WASI has no users, so CPython for WASI has no ``os.getuid`` and its
siblings, and ``from os import getuid`` fails at import (setuptools'
vendored platformdirs does it, so Pyramid's ``import pkg_resources``
failed). They answer 0, the owner ``os.stat`` reports for every file
there, so ownership checks such as "is this directory mine" agree.
"""

import hashlib
import hmac
import os
from typing import Optional

ID_FUNCTIONS = ("getuid", "geteuid", "getgid", "getegid")


def _nobody_but_us() -> int:
    """The only user and group WASI has."""
    return 0


def pbkdf2_hmac(hash_name: str, password: bytes, salt: bytes, iterations: int, dklen: Optional[int] = None) -> bytes:
    """RFC 8018 PBKDF2 with HMAC-``hash_name``, as ``hashlib.pbkdf2_hmac``."""
    password = bytes(memoryview(password))
    salt = bytes(memoryview(salt))
    if iterations < 1:
        raise ValueError("iteration value must be greater than 0.")
    base = hmac.new(password, digestmod=hash_name)
    size = base.digest_size
    if dklen is None:
        dklen = size
    if dklen < 1:
        raise ValueError("key length must be greater than 0.")
    blocks = []
    index = 1
    while len(blocks) * size < dklen:
        # U1 = PRF(P, S || INT(i)); Ui = PRF(P, Ui-1); T = U1 xor ... xor Uc.
        # Copying the keyed HMAC state avoids re-keying per iteration.
        mac = base.copy()
        mac.update(salt + index.to_bytes(4, "big"))
        u = mac.digest()
        acc = int.from_bytes(u, "big")
        for _ in range(iterations - 1):
            mac = base.copy()
            mac.update(u)
            u = mac.digest()
            acc ^= int.from_bytes(u, "big")
        blocks.append(acc.to_bytes(size, "big"))
        index += 1
    return b"".join(blocks)[:dklen]


def install() -> None:
    """Fill in what this CPython lacks; leaves real implementations alone."""
    if not hasattr(hashlib, "pbkdf2_hmac"):
        hashlib.pbkdf2_hmac = pbkdf2_hmac
    for name in ID_FUNCTIONS:
        if not hasattr(os, name):
            setattr(os, name, _nobody_but_us)
