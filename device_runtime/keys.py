"""A SuperNode's key pair for Flower's node authentication, made on the device itself.

``python -m device_runtime.keys node PATH`` writes ``PATH`` (the private key, OpenSSH
format, NIST P-384, for ``flower-supernode --auth-supernode-private-key``; mode 0600) and
``PATH.pub`` (for the researcher's ``flwr supernode register``). Nothing is overwritten:
a replaced key locks the node out. The private key never leaves the device, so the device
makes it: this needs only ``cryptography`` (which Flower depends on), not ``server/``.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["make_node_key", "refuse_existing", "write_key_file"]


def write_key_file(path: str, data: bytes, private: bool) -> None:
    """Write a new file (never over an existing one), 0600 when ``private``."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def refuse_existing(paths: list[str]) -> None:
    for p in paths:
        if os.path.lexists(p):
            raise FileExistsError(f"{p} exists: keys are never overwritten (move it away "
                                  "first; a new CA or node key locks out whoever trusts the old)")


def make_node_key(path: str) -> tuple[str, str]:
    """A SuperNode key pair: ``path`` (private, OpenSSH) and ``path.pub``."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec
    except ImportError as e:
        raise OSError("making a node key needs the 'cryptography' package (installed with "
                      "Flower: pip install 'nnfleet[device]')") from e
    refuse_existing([path, path + ".pub"])
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    write_key_file(path, private, private=True)
    write_key_file(path + ".pub", public + b"\n", private=False)
    return path, path + ".pub"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m device_runtime.keys",
                                description="make this device's SuperNode key pair")
    sub = p.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("node", help="a SuperNode key pair: PATH and PATH.pub")
    n.add_argument("path", metavar="PATH")
    a = p.parse_args(argv)
    try:
        for path in make_node_key(a.path):
            print(path)
    except OSError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
