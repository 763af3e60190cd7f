"""``fedhem certs`` and ``fedhem keys --kind node``: a CA, a server certificate it signs for the
hosts given, and OpenSSH ECDSA P-384 node keys (what Flower's TLS and SuperNode authentication
take); checked with ``cryptography`` and by a TLS handshake on 127.0.0.1."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from fedhem_kernel.__main__ import main


def test_certs_make_a_ca_and_a_server_certificate_it_signs(tmp_path):
    assert (
        main(["certs", "--out", str(tmp_path), "--host", "127.0.0.1", "--host", "hub.local"]) == 0
    )
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((tmp_path / "server.pem").read_bytes())
    server.verify_directly_issued_by(ca)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert names.get_values_for_type(x509.DNSName) == ["hub.local"]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE((tmp_path / key).stat().st_mode) == 0o600
    assert main(["certs", "--out", str(tmp_path)]) == 2  # no silent overwrite


def test_a_tls_client_trusting_the_ca_connects_to_the_server_on_loopback(tmp_path):
    main(["certs", "--out", str(tmp_path)])
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(tmp_path / "server.pem", tmp_path / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(tls.recv(5))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"hello")
                assert tls.recv(5) == b"hello"
        thread.join(timeout=10)


def test_node_keys_are_openssh_ecdsa_p384(tmp_path):
    assert main(["keys", "--kind", "node", "--out", str(tmp_path / "node1")]) == 0
    key = serialization.load_ssh_private_key((tmp_path / "node1").read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    public = (tmp_path / "node1.pub").read_text()
    assert public.startswith("ecdsa-sha2-nistp384 ")
    assert stat.S_IMODE((tmp_path / "node1").stat().st_mode) == 0o600


def test_flowers_supernode_takes_the_node_key(tmp_path):
    """The check flower-supernode runs on --auth-supernode-private-key (flwr 1.41, pinned)."""
    import argparse

    from flwr.supernode.cli.flower_supernode import _try_setup_client_authentication

    main(["keys", "--kind", "node", "--out", str(tmp_path / "node1")])
    args = argparse.Namespace(
        auth_supernode_private_key=str(tmp_path / "node1"), auth_supernode_public_key=None
    )
    private, public = _try_setup_client_authentication(args)
    assert private.curve.name == "secp384r1" and public.curve.name == "secp384r1"
