"""Test TLS material and SuperNode authentication keys for a loopback Flower deployment.

Flower 1.41 serves the SuperLink's Fleet, Control and Runtime APIs over HTTPS on one port
and, with ``flower-superlink --enable-supernode-auth`` (which requires TLS), only admits
SuperNodes whose public key was registered beforehand. This module writes everything such a
deployment needs on 127.0.0.1, in the formats Flower 1.41 reads:

``OUT_DIR/``
    ``ca.crt``                     self-signed CA certificate (PEM). Pass to the SuperLink as
                                   ``--ssl-ca-certfile``, to SuperNodes as
                                   ``--root-certificates`` and to the ``flwr`` CLI as
                                   ``root-certificates`` (an absolute path) in ``config.toml``.
    ``ca.key``                     CA private key (PEM, PKCS#8). Flower never reads it.
    ``server.crt``                 server certificate (PEM) signed by the CA, valid for
                                   ``localhost``, ``127.0.0.1`` and ``::1``
                                   (``--ssl-certfile``).
    ``server.key``                 server private key (PEM, PKCS#8, ``--ssl-keyfile``).
    ``supernode-keys/node-<i>``     SuperNode ``i``'s EC P-384 private key in OpenSSH format
                                   (``flower-supernode --auth-supernode-private-key``).
    ``supernode-keys/node-<i>.pub`` its public key, one OpenSSH line (``ecdsa-sha2-nistp384
                                   ...``), registered with ``flwr supernode register``.

Flower 1.41 has no file of authorized keys: nodes are registered one by one, against a
running SuperLink, with ``flwr supernode register <node-i.pub> <connection>``. Registrations
live in the SuperLink's database (in memory unless ``--database`` is given).

Private keys are written unencrypted with mode 0600: this is test material, not for
production use.

    python -m simulations.certs OUT_DIR --nodes 2
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger(__name__)

#: Host names and addresses the server certificate is valid for.
LOOPBACK_DNS_NAMES: tuple[str, ...] = ("localhost",)
LOOPBACK_IPS: tuple[str, ...] = ("127.0.0.1", "::1")

#: Curve of the SuperNode keys. Flower accepts any NIST curve; P-384 is what it uses itself.
NODE_KEY_CURVE: ec.EllipticCurve = ec.SECP384R1()
#: Curve of the CA and server keys.
TLS_KEY_CURVE: ec.EllipticCurve = ec.SECP256R1()

NODE_KEY_DIR = "supernode-keys"


@dataclass(frozen=True)
class NodeKeyPair:
    """Paths of one SuperNode's authentication key pair."""

    private_key: Path  # OpenSSH private key, for --auth-supernode-private-key
    public_key: Path  # OpenSSH public key line, for `flwr supernode register`


@dataclass(frozen=True)
class LoopbackPki:
    """Paths of the files written by :func:`generate`."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    nodes: tuple[NodeKeyPair, ...]

    def superlink_args(self) -> list[str]:
        """``flower-superlink`` TLS arguments (add ``--enable-supernode-auth`` for auth)."""
        return [
            "--ssl-ca-certfile", str(self.ca_cert),
            "--ssl-certfile", str(self.server_cert),
            "--ssl-keyfile", str(self.server_key),
        ]

    def supernode_args(self, index: int | None = None) -> list[str]:
        """``flower-supernode`` TLS arguments; with ``index``, also that node's auth key."""
        args = ["--root-certificates", str(self.ca_cert)]
        if index is not None:
            args += ["--auth-supernode-private-key", str(self.nodes[index].private_key)]
        return args


def _write(path: Path, data: bytes, private: bool = False) -> None:
    """Write ``data`` to ``path``; private files get mode 0600 from creation on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()  # os.open's mode applies only to newly created files
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _pem_private_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedgate test"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_ca(
    days: int = 365,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Return a fresh self-signed CA certificate and its private key."""
    key = ec.generate_private_key(TLS_KEY_CURVE)
    now = datetime.datetime.now(datetime.UTC)
    name = _name("fedgate test CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    dns_names: Sequence[str] = LOOPBACK_DNS_NAMES,
    ips: Sequence[str] = LOOPBACK_IPS,
    days: int = 365,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Return a server certificate signed by the CA, valid for ``dns_names`` and ``ips``."""
    if not dns_names and not ips:
        raise ValueError("a server certificate needs at least one DNS name or IP address")
    key = ec.generate_private_key(TLS_KEY_CURVE)
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.DNSName(n) for n in dns_names] + [
        x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(dns_names[0] if dns_names else ips[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def make_node_key() -> tuple[bytes, bytes]:
    """Return one SuperNode key pair as (OpenSSH private key, OpenSSH public key line)."""
    key = ec.generate_private_key(NODE_KEY_CURVE)
    private = key.private_bytes(
        serialization.Encoding.PEM,  # PEM-armoured "BEGIN OPENSSH PRIVATE KEY"
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    return private, public + b"\n"


def write_node_keys(out_dir: str | Path, num_nodes: int, start: int = 0) -> tuple[NodeKeyPair, ...]:
    """Write key pairs ``node-<start>`` .. ``node-<start+num_nodes-1>`` under
    ``out_dir/supernode-keys`` and return their paths."""
    key_dir = Path(out_dir) / NODE_KEY_DIR
    pairs = []
    for i in range(start, start + num_nodes):
        private, public = make_node_key()
        pair = NodeKeyPair(key_dir / f"node-{i}", key_dir / f"node-{i}.pub")
        _write(pair.private_key, private, private=True)
        _write(pair.public_key, public)
        pairs.append(pair)
    log.info("wrote %d SuperNode key pair(s) to %s", num_nodes, key_dir)
    return tuple(pairs)


def generate(out_dir: str | Path, num_nodes: int, days: int = 365) -> LoopbackPki:
    """Write a CA, a loopback server certificate and ``num_nodes`` SuperNode key pairs to
    ``out_dir`` (created if needed; existing files are overwritten) and return their paths
    (absolute, as ``config.toml``'s ``root-certificates`` requires)."""
    if num_nodes < 0:
        raise ValueError(f"num_nodes must be >= 0, got {num_nodes}")
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    ca_cert, ca_key = make_ca(days)
    server_cert, server_key = make_server_cert(ca_cert, ca_key, days=days)
    pem = serialization.Encoding.PEM
    paths = {
        "ca_cert": out / "ca.crt",
        "ca_key": out / "ca.key",
        "server_cert": out / "server.crt",
        "server_key": out / "server.key",
    }
    _write(paths["ca_cert"], ca_cert.public_bytes(pem))
    _write(paths["ca_key"], _pem_private_key(ca_key), private=True)
    _write(paths["server_cert"], server_cert.public_bytes(pem))
    _write(paths["server_key"], _pem_private_key(server_key), private=True)
    log.info("wrote CA and server certificate (localhost, 127.0.0.1, ::1) to %s", out)

    nodes = write_node_keys(out, num_nodes)
    return LoopbackPki(nodes=nodes, **paths)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point: ``python -m simulations.certs OUT_DIR --nodes N``."""
    parser = argparse.ArgumentParser(
        prog="python -m simulations.certs",
        description="Write test TLS certificates and SuperNode auth keys for a loopback "
        "Flower 1.41 deployment.",
    )
    parser.add_argument("out_dir", type=Path, help="directory to write into (created if needed)")
    parser.add_argument("--nodes", type=int, default=2, help="SuperNode key pairs to write (default 2)")
    parser.add_argument("--days", type=int, default=365, help="certificate validity in days")
    args = parser.parse_args(argv)
    if args.nodes < 0:
        parser.error("--nodes must be >= 0")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    pki = generate(args.out_dir, args.nodes, days=args.days)
    print(f"CA certificate      {pki.ca_cert}")
    print(f"server certificate  {pki.server_cert}  (key {pki.server_key})")
    for i, node in enumerate(pki.nodes):
        print(f"supernode {i} key     {node.private_key}  (public {node.public_key})")
    print("\nflower-superlink " + " ".join(pki.superlink_args()) + " --enable-supernode-auth")
    if pki.nodes:
        print("flower-supernode " + " ".join(pki.supernode_args(0)) + " ...")
        print(f"flwr supernode register {pki.nodes[0].public_key} <connection>")
    return 0


if __name__ == "__main__":
    sys.exit(main())
