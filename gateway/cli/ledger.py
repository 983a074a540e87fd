"""`exportgate ledger verify|prune` and `exportgate keys generate`: the ledger's offline tools."""

import argparse
import hashlib
import re
import secrets
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gateway.adapters.ledger import files
from gateway.adapters.ledger.prune import PruneError, prune_instance
from gateway.adapters.ledger.reader import instance_dirs, live_segments
from gateway.adapters.ledger.signing import KeyFileError, PublicKey, Signer, generate, load_public_key, load_signer
from gateway.adapters.ledger.verified import check_instance
from gateway.adapters.quota import DEFAULT_IDEMPOTENCY_WINDOW_S, DEFAULT_OWNERSHIP_TTL_S
from gateway.adapters.quota_snapshot import SETTLE_S, CannotSnapshot, Taken, take
from gateway.core.verify import ChainCheck, Expected, Finding, Kind, TrustedKey, Where

__all__ = ["check_instance", "expected_heads", "heads_from", "parse_expect_head", "verify"]

_HEAD = re.compile(r"^(?P<instance>[^=]+)=(?:(?P<seq>\d+):)?(?P<hash>[0-9a-f]{64})$")
DAY_S = 86_400.0


class UsageError(Exception):
    """A bad argument; printed as one line, exit status 2."""


def parse_expect_head(value: str) -> tuple[str, Expected]:
    """`INSTANCE=HASH` or `INSTANCE=SEQ:HASH` as (instance directory name, expectation)."""
    match = _HEAD.match(value)
    if match is None:
        raise UsageError(f"--expect-head {value!r}: expected INSTANCE=HASH or INSTANCE=SEQ:HASH (64 hex digits)")
    seq = match.group("seq")
    expected = Expected(match.group("hash"), int(seq) if seq else None, f"--expect-head {value[:40]}")
    return files.safe_name(match.group("instance")), expected


def expected_heads(args: argparse.Namespace) -> dict[str, list[Expected]]:
    """The heads `--expect-head` and `--expect-heads-from` name, by instance (raises UsageError)."""
    expected: dict[str, list[Expected]] = {}
    pairs = [parse_expect_head(v) for v in args.expect_head]
    if args.expect_heads_from is not None:
        pairs.extend(heads_from(args.expect_heads_from))
    for name, wanted in pairs:
        expected.setdefault(name, []).append(wanted)
    return expected


def heads_from(anchor_dir: Path) -> Iterable[tuple[str, Expected]]:
    """The checkpoint copies the writers published to an anchor directory, one file per instance."""
    if not anchor_dir.is_dir():
        raise UsageError(f"{anchor_dir}: not a directory")
    for path in sorted(anchor_dir.glob("*.json")):
        record = files.read_json(path)
        if record is None or not isinstance(record.get("hash"), str) or not isinstance(record.get("seq"), int):
            raise UsageError(f"{path}:1: not a checkpoint copy")
        yield (
            files.safe_name(str(record.get("instance", path.stem))),
            Expected(record["hash"], record["seq"], str(path)),
        )


def _where(root: Path, name: str, finding: Finding) -> str:
    if finding.where.line == 0:
        return str(root / name)
    return f"{root / name / finding.where.segment}:{finding.where.line}"


def _summary(name: str, check: ChainCheck, segments: int) -> str:
    text = (
        f"{name}: {check.records} records, {check.checkpoints} checkpoints, {segments} segments; "
        f"head seq {check.seq} hash {check.hash}"
    )
    if check.start_seq:
        text += f"; continues from the prune anchor at seq {check.start_seq}"
    unsigned = check.seq - (check.checkpoint[0] if check.checkpoint else check.start_seq)
    if unsigned:
        text += f"; {unsigned} records after the last checkpoint are covered by the hash chain only"
    return text


def verify(root: Path, key: PublicKey, expected: dict[str, list[Expected]]) -> int:
    """Print each chain's counts and head, or its first problem as `file:line: kind: detail` (on standard
    error, with warnings); 1 on any problem."""
    trusted = TrustedKey(key.key_id, key.verify)
    dirs = {d.name: d for d in instance_dirs(root)}
    failed = 0
    records = 0
    for name in sorted(set(dirs) | set(expected)):
        if name not in dirs:
            finding = Finding(Where("-", 0), Kind.MISSING_CHAIN, f"{expected[name][0].source} names a chain not here")
            print(f"{root / name}: {finding.kind}: {finding.detail}", file=sys.stderr)
            failed += 1
            continue
        check, warnings = check_instance(dirs[name], trusted, expected.get(name, []))
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
        if check.finding is not None:
            print(f"{_where(root, name, check.finding)}: {check.finding.kind}: {check.finding.detail}", file=sys.stderr)
            failed += 1
            continue
        records += check.records
        print(_summary(name, check, len(live_segments(dirs[name]))))
    if failed:
        print(f"FAILED: {failed} of {len(set(dirs) | set(expected))} chains", file=sys.stderr)
        return 1
    print(f"ok: {len(dirs)} chains, {records} records verified with key {key.key_id}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    root: Path = args.dir
    try:
        if not root.is_dir():
            raise UsageError(f"{root}: not a ledger directory")
        if args.public_key.resolve().is_relative_to(root.resolve()):
            raise UsageError(f"{args.public_key}: a key inside the ledger directory proves nothing; keep it outside")
        key = load_public_key(args.public_key)
        expected = expected_heads(args)
    except (UsageError, KeyFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return verify(root, key, expected)


def _prune(args: argparse.Namespace) -> int:
    root: Path = args.dir
    if not root.is_dir():
        print(f"error: {root}: not a ledger directory", file=sys.stderr)
        return 2
    try:
        signer = load_signer(args.signing_key)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    now = time.time()
    cutoff = now - args.older_than * DAY_S
    # The quota snapshot keeps what the pruned records counted (budgets, training operations): write
    # one first, and prune only what it covers.
    try:
        taken = snapshot_for_prune(root, args.snapshot_dir or root, signer, now, args.snapshot_keep, args.dry_run)
    except (CannotSnapshot, OSError) as exc:
        print(f"error: quota snapshot: {exc}; nothing pruned", file=sys.stderr)
        return 1
    print(_snapshot_line(taken, args.dry_run))
    status = 0
    for instance_dir in instance_dirs(root):
        covered = taken.chains.get(instance_dir.name)
        held: list[str] = []
        try:
            pruned = prune_instance(
                instance_dir, args.archive_dir, signer, cutoff=cutoff, now=now, dry_run=args.dry_run,
                covered_through=covered.seq if covered is not None else 0, held_back=held,
            )  # fmt: skip
        except (PruneError, OSError) as exc:
            print(f"{instance_dir}: {exc}", file=sys.stderr)
            status = 1
            continue
        if held:
            print(f"{instance_dir.name}: {held[0]} and later segments stay: no quota snapshot covers them yet")
        if pruned is None:
            if not held:
                print(f"{instance_dir.name}: no closed segment older than {args.older_than:g} days")
            continue
        verb = "would archive" if args.dry_run else "archived"
        print(
            f"{instance_dir.name}: {verb} {len(pruned.segments)} segments ({pruned.segments[0]}..{pruned.segments[-1]},"
            f" seq {pruned.first_seq}..{pruned.last_seq}) to {pruned.archive}; the chain continues from seq "
            f"{pruned.last_seq} hash {pruned.last_hash} ({files.ANCHOR})"
        )
    return status


def snapshot_for_prune(root: Path, directory: Path, signer: Signer, now: float, keep: int, dry_run: bool) -> Taken:
    """A quota snapshot of the ledger as it stands (less the last SETTLE_S seconds); computed only, on a dry run."""
    return take(
        root, directory, signer, now=now, until=now - SETTLE_S, keep=keep,
        window_s=DEFAULT_IDEMPOTENCY_WINDOW_S, ownership_ttl_s=DEFAULT_OWNERSHIP_TTL_S, write=not dry_run,
    )  # fmt: skip


def _snapshot_line(taken: Taken, dry_run: bool) -> str:
    if taken.path is None and not taken.added:
        return "quota snapshot: the ledger holds no record to cover"
    chains = ", ".join(f"{name}@{pos.seq}" for name, pos in sorted(taken.chains.items()))
    if dry_run:
        return f"quota snapshot (not written on a dry run) would cover {taken.records} records ({chains})"
    if not taken.written:
        return f"quota snapshot {taken.path} still covers the ledger: {taken.records} records ({chains})"
    return f"quota snapshot {taken.path}: {taken.records} records ({chains})"


def _keys_generate(args: argparse.Namespace) -> int:
    if args.out is not None:
        if args.private is not None or args.public is not None:
            print("error: give --out DIR, or --private FILE and --public FILE", file=sys.stderr)
            return 2
        private, public = args.out / "ledger-signing.pem", args.out / "ledger-signing.pub.pem"
    elif args.private is not None and args.public is not None:
        private, public = args.private, args.public
    else:
        print("error: give --out DIR, or --private FILE and --public FILE", file=sys.stderr)
        return 2
    try:
        kid = generate(private, public)
    except KeyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"key {kid}: private {private} (mode 0600: ledger.signing_key_file), public {public}")
    print("keep the public key outside the ledger directory; `ledger verify --public-key` takes it")
    return 0


def _keys_admin_token(args: argparse.Namespace) -> int:
    """The token goes to the operator once; only its SHA-256 goes into the tokens file."""
    token = secrets.token_urlsafe(32)
    digest = hashlib.sha256(token.encode()).hexdigest()
    print(f"token (give to {args.name}, shown once): {token}")
    print(f"tokens_file entry: - {{name: {args.name}, role: {args.role}, sha256: {digest}}}")
    return 0


def _at_least_one(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(sub: Any) -> None:
    """Add the `ledger` and `keys` command groups to the `exportgate` parser."""
    ledger = sub.add_parser("ledger", help="verify or prune a ledger directory")
    commands = ledger.add_subparsers(dest="ledger_command", required=True)
    check = commands.add_parser("verify", help="check hash chains and signed checkpoints; exit 1 at the first problem")
    check.add_argument("dir", type=Path, help="the ledger directory (one subdirectory per instance)")
    check.add_argument(
        "--public-key", type=Path, required=True, metavar="FILE", help="PEM Ed25519 public key, kept outside the ledger"
    )
    check.add_argument("--expect-head", action="append", default=[], metavar="INSTANCE=[SEQ:]HASH",
                       help="a record the chain must still hold (e.g. a published checkpoint); repeatable")  # fmt: skip
    check.add_argument("--expect-heads-from", type=Path, metavar="ANCHOR_DIR",
                       help="expect every checkpoint copy in this directory (ledger.anchor_dir)")  # fmt: skip
    check.set_defaults(func=_verify)
    prune = commands.add_parser("prune", help="archive segments past retention, leaving a signed prune anchor")
    prune.add_argument("dir", type=Path)
    prune.add_argument("--older-than", type=float, default=730.0, metavar="DAYS", help="retention (default 730)")
    prune.add_argument("--archive-dir", type=Path, required=True, metavar="ARCHIVE")
    prune.add_argument("--signing-key", type=Path, required=True, metavar="FILE", help="the ledger's private key")
    prune.add_argument("--dry-run", action="store_true", help="say what would move; move nothing")
    prune.add_argument("--snapshot-dir", type=Path, metavar="DIR",
                       help="quota snapshots' directory (default: the ledger directory)")  # fmt: skip
    prune.add_argument("--snapshot-keep", type=_at_least_one, default=3, metavar="N",
                       help="quota snapshots kept (ledger.snapshot_keep; default 3)")  # fmt: skip
    prune.set_defaults(func=_prune)
    keys = sub.add_parser("keys", help="ledger signing keys")
    key_commands = keys.add_subparsers(dest="keys_command", required=True)
    gen = key_commands.add_parser("generate", help="write a new Ed25519 key pair (private key mode 0600)")
    gen.add_argument("--out", type=Path, metavar="DIR", help="writes ledger-signing.pem and ledger-signing.pub.pem")
    gen.add_argument("--private", type=Path, metavar="FILE")
    gen.add_argument("--public", type=Path, metavar="FILE")
    gen.set_defaults(func=_keys_generate)
    admin = key_commands.add_parser(
        "admin-token", help="mint an admin API token; print it once and its tokens_file entry"
    )
    admin.add_argument("--name", required=True, help="who holds the token (recorded in the ledger on every change)")
    admin.add_argument("--role", choices=("read", "operate", "admin"), default="read",
                       help="read: look up, explain, usage; operate: also release; admin: also reload")  # fmt: skip
    admin.set_defaults(func=_keys_admin_token)
