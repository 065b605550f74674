"""Certificates for a throwaway control plane: a CA, the API server's serving cert, an admin client cert
(O=system:masters), the service-account signing key, and a serving cert for Hami's webhook/extender."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    ca_key: Path
    apiserver_cert: Path
    apiserver_key: Path
    admin_cert: Path
    admin_key: Path
    sa_pub: Path
    sa_key: Path
    hami_cert: Path
    hami_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def _cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, issuer: x509.Name,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool = False, sans: list[x509.GeneralName] | None = None,
          usages: list[x509.ObjectIdentifier] | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
         .not_valid_after(now + dt.timedelta(days=2))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usages:
        b = b.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if ca:
        b = b.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                          content_commitment=False, key_encipherment=False,
                                          data_encipherment=False, key_agreement=False, encipher_only=False,
                                          decipher_only=False), critical=True)
    return b.sign(issuer_key, hashes.SHA256())


def make_pki(root: Path) -> Pki:
    root.mkdir(parents=True, exist_ok=True)
    ca_key = _key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hami-e2e-ca")])
    ca = _cert(ca_name, ca_key, ca_name, ca_key, ca=True)
    local = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]

    def issue(name: str, org: str | None, sans: list[x509.GeneralName] | None,
              usages: list[x509.ObjectIdentifier]) -> tuple[Path, Path]:
        key = _key()
        attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        cert = _cert(x509.Name(attrs), key, ca_name, ca_key, sans=sans, usages=usages)
        cert_path, key_path = root / f"{name}.crt", root / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key_path, key)
        return cert_path, key_path

    (root / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    _write_key(root / "ca.key", ca_key)
    server = [ExtendedKeyUsageOID.SERVER_AUTH]
    api_cert, api_key = issue("kube-apiserver",  None, [*local, x509.DNSName("kubernetes.default.svc")], server)
    admin_cert, admin_key = issue("admin", "system:masters", None, [ExtendedKeyUsageOID.CLIENT_AUTH])
    hami_cert, hami_key = issue("hami", None, local, server)
    sa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write_key(root / "sa.key", sa)
    (root / "sa.pub").write_bytes(sa.public_key().public_bytes(serialization.Encoding.PEM,
                                                                serialization.PublicFormat.SubjectPublicKeyInfo))
    return Pki(root / "ca.crt", root / "ca.key", api_cert, api_key, admin_cert, admin_key,
               root / "sa.pub", root / "sa.key", hami_cert, hami_key)
