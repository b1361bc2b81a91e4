"""A real RFC 3161 Time-Stamping Authority for tests: `openssl ts -reply` behind a small HTTP handler on 127.0.0.1.

Each TSA gets its own CA made here with openssl (a root, and a TSA certificate with the critical
timeStamping extended key usage RFC 3161 requires), so a test can trust one TSA and not another.
"""

from __future__ import annotations

import base64
import json
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

TSA_CONFIG = """\
[ tsa ]
default_tsa = tsa_config
[ tsa_config ]
dir = {root}
serial = $dir/serial
crypto_device = builtin
signer_cert = $dir/tsa.crt
signer_key = $dir/tsa.key
signer_digest = sha256
default_policy = 1.3.6.1.4.1.57264.2
digests = sha256, sha384, sha512
accuracy = secs:1
ordering = no
tsa_name = yes
ess_cert_id_chain = no
ess_cert_id_alg = sha256
"""

CA_EXT = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n"
TSA_EXT = ("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
           "extendedKeyUsage=critical,timeStamping\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n")


def openssl(*args: str, cwd: Path) -> None:
    """Run openssl; fail with its stderr."""
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])}: {proc.stderr.strip()[-500:]}")


def make_tsa_ca(root: Path, name: str) -> None:
    """ca.key/ca.crt (a root) and tsa.key/tsa.crt (the TSA, signed by the root), ECDSA P-256, in root."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ca.ext").write_text(CA_EXT)
    (root / "tsa.ext").write_text(TSA_EXT)
    for key in ("ca.key", "tsa.key"):
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key, cwd=root)
    openssl("req", "-new", "-key", "ca.key", "-out", "ca.csr", "-subj", f"/O=xrun tests/CN={name} root", cwd=root)
    openssl("x509", "-req", "-in", "ca.csr", "-signkey", "ca.key", "-out", "ca.crt", "-days", "3650",
            "-extfile", "ca.ext", cwd=root)
    openssl("req", "-new", "-key", "tsa.key", "-out", "tsa.csr", "-subj", f"/O=xrun tests/CN={name}", cwd=root)
    openssl("x509", "-req", "-in", "tsa.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "tsa.crt", "-days", "3650", "-extfile", "tsa.ext", cwd=root)
    (root / "chain.pem").write_text((root / "tsa.crt").read_text() + (root / "ca.crt").read_text())
    (root / "serial").write_text("01\n")
    (root / "tsa.cnf").write_text(TSA_CONFIG.format(root=root))


class TsaServer:
    """An RFC 3161 TSA at http://127.0.0.1:PORT/ answering timestamp queries with `openssl ts -reply`."""

    def __init__(self, root: Path, name: str = "xrun test TSA") -> None:
        self.root, self.name = root, name
        make_tsa_ca(root, name)
        self.requests = 0
        self._lock = threading.Lock()  # openssl ts keeps its serial number in a file
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The TSA URL xrun posts queries to."""
        return f"http://127.0.0.1:{self._server.server_address[1]}/tsr"

    @property
    def chain(self) -> Path:
        """The PEM chain a verifier trusts: TSA certificate, then the root."""
        return self.root / "chain.pem"

    def start(self) -> "TsaServer":
        """Serve in a thread."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self._server.shutdown()
        self._server.server_close()

    def reply(self, query: bytes) -> bytes:
        """The DER TimeStampResp for a DER TimeStampReq."""
        with self._lock:
            self.requests += 1
            (self.root / "query.tsq").write_bytes(query)
            openssl("ts", "-reply", "-config", "tsa.cnf", "-queryfile", "query.tsq", "-out", "reply.tsr", cwd=self.root)
            return (self.root / "reply.tsr").read_bytes()

    def trusted_root(self) -> dict[str, Any]:
        """A sigstore trusted_root.json naming this TSA (leaf, then root), as cosign and sigstore-go read it."""
        certs = [_der(self.root / "tsa.crt"), _der(self.root / "ca.crt")]
        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "timestampAuthorities": [{
                "subject": {"organization": "xrun tests", "commonName": self.name},
                "certChain": {"certificates": [{"rawBytes": base64.b64encode(c).decode()} for c in certs]},
                "validFor": {"start": "2000-01-01T00:00:00Z"},
            }],
        }

    def write_trusted_root(self, path: Path) -> Path:
        """trusted_root.json at path."""
        path.write_text(json.dumps(self.trusted_root(), indent=2))
        return path

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        tsa = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                query = self.rfile.read(length)
                if self.headers.get("Content-Type") != "application/timestamp-query":
                    self.send_error(415, "expected application/timestamp-query")
                    return
                try:
                    body = tsa.reply(query)
                except RuntimeError as exc:
                    self.send_error(400, str(exc)[:200])
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/timestamp-reply")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler


def _der(pem: Path) -> bytes:
    text = pem.read_text()
    body = text.split("-----BEGIN CERTIFICATE-----")[1].split("-----END CERTIFICATE-----")[0]
    return base64.b64decode("".join(body.split()))
