"""Certificates and keys for a Flower deployment with TLS and SuperNode authentication.

``python -m server.keys tls DIR --host NAME ...`` makes a certificate authority and a
SuperLink server certificate signed by it (``ca.crt``, ``ca.key``, ``server.pem``,
``server.key``). The server certificate names every ``--host`` (the name or address that
SuperNodes and the ``flwr`` CLI dial) and always ``localhost`` and ``127.0.0.1``, because
the SuperLink's own ServerApp process connects to its Runtime API there, over TLS.

``python -m server.keys node PATH`` makes one SuperNode's key pair: ``PATH`` (the
private key, OpenSSH format, NIST P-384, for ``flower-supernode
--auth-supernode-private-key``) and ``PATH.pub`` (for ``flwr supernode register``). On a
device, where ``server/`` is not installed, ``python -m device_runtime.keys node PATH``
does the same (this module uses it).

Private keys are written 0600 and nothing is overwritten: a replaced CA or node key
would lock out every node that trusts the old one. Needs ``cryptography``, which Flower
depends on.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from device_runtime.keys import make_node_key, refuse_existing
from device_runtime.keys import write_key_file as _write

ALWAYS = ("localhost", "127.0.0.1")  # the SuperLink's ServerApp dials its Runtime API here
_PEM = serialization.Encoding.PEM


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _usage(**on: bool) -> x509.KeyUsage:
    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{f: on.get(f, False) for f in flags})


def make_tls(directory: str, hosts: list[str], days: int = 365) -> dict[str, str]:
    """A CA and a server certificate for ``hosts`` (plus localhost, 127.0.0.1) in
    ``directory``; returns the four paths by name."""
    paths = {n: os.path.join(directory, n) for n in ("ca.crt", "ca.key", "server.pem",
                                                      "server.key")}
    refuse_existing(list(paths.values()))
    os.makedirs(directory, mode=0o700, exist_ok=True)
    names = list(dict.fromkeys([*hosts, *ALWAYS]))
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "nnfleet deployment CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_usage(key_cert_sign=True, crl_sign=True), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA384()))
    key = ec.generate_private_key(ec.SECP384R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(digital_signature=True, key_agreement=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in names]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski), critical=False)
            .sign(ca_key, hashes.SHA384()))
    pkcs8 = serialization.PrivateFormat.PKCS8
    none = serialization.NoEncryption()
    _write(paths["ca.key"], ca_key.private_bytes(_PEM, pkcs8, none), private=True)
    _write(paths["server.key"], key.private_bytes(_PEM, pkcs8, none), private=True)
    _write(paths["ca.crt"], ca.public_bytes(_PEM), private=False)
    _write(paths["server.pem"], cert.public_bytes(_PEM), private=False)
    return paths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m server.keys", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tls", help="a CA and a SuperLink server certificate in DIR")
    t.add_argument("directory", metavar="DIR")
    t.add_argument("--host", action="append", default=[],
                   help="name or IP address the SuperLink is reached at (repeatable)")
    t.add_argument("--days", type=int, default=365, help="validity (default 365)")
    n = sub.add_parser("node", help="a SuperNode key pair: PATH and PATH.pub")
    n.add_argument("path", metavar="PATH")
    a = p.parse_args(argv)
    try:
        if a.cmd == "tls":
            if a.days < 1:
                raise ValueError(f"--days must be at least 1, got {a.days}")
            for name, path in make_tls(a.directory, a.host, a.days).items():
                print(f"{name}: {path}")
        else:
            for path in make_node_key(a.path):
                print(path)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
