#!/usr/bin/env python3
"""Known-answer vectors for CHAP, computed independently of the Rust code.

Each output line is:

    <CHAP_A> <CHAP_I> <secret hex> <CHAP_C as sent on the wire> <response hex>

where the response is H(CHAP_I byte || secret || challenge) per RFC 1994
section 4.1, with H chosen by the IANA CHAP_A number (5 MD5, 6 SHA-1,
7 SHA-256, 8 SHA3-256). The challenge is written in one of the RFC 7143
encodings: 0x/0X hex (sometimes with an odd digit count, which implies a
leading zero nibble) or 0b/0B base64 (with or without padding).
Inputs are derived deterministically from a SHAKE-128 stream, so the file is
stable without being typed in by hand.
"""

import base64
import hashlib

ALGS = {5: hashlib.md5, 6: hashlib.sha1, 7: hashlib.sha256, 8: hashlib.sha3_256}


def stream(label, n):
    return hashlib.shake_128(label.encode()).digest(n)


def encode(challenge, style):
    if style == "hex":
        return "0x" + challenge.hex()
    if style == "HEX":
        return "0X" + challenge.hex().upper()
    if style == "odd":
        # Drop a leading zero nibble: RFC 7143 section 6.1 says it is implied.
        h = challenge.hex()
        assert h[0] == "0"
        return "0x" + h[1:]
    if style == "b64":
        return "0b" + base64.b64encode(challenge).decode()
    if style == "B64nopad":
        return "0B" + base64.b64encode(challenge).decode().rstrip("=")
    raise ValueError(style)


def cases():
    # (identifier, secret, challenge, encoding)
    yield 0, b"", b"\x00", "hex"
    yield 255, b"12345678901234567890", b"\x01" * 16, "b64"
    yield 1, b"alice-secret-16b", bytes(range(16)), "hex"
    yield 0x7F, "s\u00e9cr\u00e8t-\u00fcn\u00efcode".encode(), bytes(range(32)), "b64"
    yield 42, stream("secret-a", 16), b"\x0a" + stream("chal-odd", 19), "odd"
    yield 200, stream("secret-b", 64), stream("chal-1024", 1024), "HEX"
    yield 9, stream("secret-c", 12), stream("chal-17", 17), "B64nopad"
    yield 128, stream("secret-d", 255), stream("chal-b64-1024", 1024), "b64"
    for n in range(8):
        ident = stream(f"id-{n}", 1)[0]
        secret = stream(f"secret-{n}", 12 + n * 3)
        challenge = stream(f"challenge-{n}", 1 + n * 37)
        style = ["hex", "b64", "HEX", "B64nopad"][n % 4]
        yield ident, secret, challenge, style


def main():
    for code, h in ALGS.items():
        for ident, secret, challenge, style in cases():
            response = h(bytes([ident]) + secret + challenge).hexdigest()
            print(code, ident, secret.hex() or "-", encode(challenge, style), response)


if __name__ == "__main__":
    main()
