"""Keys for the local stack, made on first start and kept in the `keys` volume (nothing secret is in the repo).

`init.py KEYS LEDGER ANCHORS`: the ledger signing key pair (as `exportgate keys generate` writes it) and a local
IdP's EC key with its key set (jwks.json, which gateway.yaml trusts), each made once; then the three volumes are
given to the gateway's user. `init.py --token SUBJECT [KEYS]` prints a token of that IdP for a registry identity
(acme-us, nordlys-se, ... in the example registry), valid for 12 hours.
"""

import json
import os
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.adapters.ledger.signing import generate

ISSUER = "https://idp.example.com"  # gateway.yaml's issuer and the example registry's
AUDIENCE = "exportgate"
KID = "compose-1"
GATEWAY_UID = 10001  # the image's exportgate user
DEFAULT_KEYS = Path("/var/lib/exportgate/keys")


def make_keys(keys: Path) -> None:
    keys.mkdir(parents=True, exist_ok=True)
    if not (keys / "ledger-signing.pem").exists():
        generate(keys / "ledger-signing.pem", keys / "ledger-signing.pub.pem")
    idp = keys / "idp.pem"
    if not idp.exists():
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())  # fmt: skip
        idp.write_bytes(pem)
        idp.chmod(0o600)
        jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
        (keys / "jwks.json").write_text(json.dumps({"keys": [jwk | {"kid": KID, "use": "sig", "alg": "ES256"}]}))


def token(keys: Path, subject: str) -> str:
    key = serialization.load_pem_private_key((keys / "idp.pem").read_bytes(), password=None)
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": subject, "iat": now, "exp": now + 12 * 3600}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": KID})  # type: ignore[arg-type]


def main(argv: list[str]) -> int:
    if argv[:1] == ["--token"] and len(argv) in (2, 3):
        print(token(Path(argv[2]) if len(argv) == 3 else DEFAULT_KEYS, argv[1]))
        return 0
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    keys, *data = (Path(a) for a in argv)
    make_keys(keys)
    for directory in (keys, *data):
        directory.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # named volumes start out root's
            for path in (directory, *directory.rglob("*")):
                os.chown(path, GATEWAY_UID, GATEWAY_UID)
    print(f"keys in {keys}; a token: docker compose run --rm init --token acme-us")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
