"""`exportgate report`: golden ledgers for the AIA trigger and the VEU half-year boundaries, every kind on a synthetic
ledger (the fold's held totals against the quota rebuild's), the formats carrying the same numbers, the same bytes
every time, HTML that fetches nothing, and refusals: a ledger that does not verify, bad arguments."""

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.ledger.reader import records_in_time_order
from gateway.config.bundled import BUNDLED_POLICIES
from gateway.core.rebuild import rebuild_state
from gateway.core.reports.fold import Fold
from gateway.core.reports.kinds import KINDS
from tests.ledger_kit import Keys, run_cli
from tests.report_kit import (
    as_csv_text,
    csv_tables,
    decision,
    external_references,
    followup,
    id_problems,
    parse_html,
    report,
    rows,
    write_ledger,
)

DAY = 86_400.0
WINDOW_S, TTL_S = 86_400.0, 30 * 86_400.0


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    (tmp_path / "keys").mkdir()
    return Keys(tmp_path / "keys")


# -- AIA trigger ------------------------------------------------------------------------------------


def aia_ledger() -> list[dict[str, Any]]:
    """Two affiliates (group alpha) and a Tier 1 tenant (beta) around the 253,000,000 TPP trigger."""
    held = [("group:alpha", "held")]
    alpha_a, alpha_b, beta = "AE/AE/AE", "SG/SG/AE", "US/US/US"
    return [
        decision("2026-03-01T10:00:00Z", "alpha-a", "a1", counters=[(*held[0], 100e6)], countries=alpha_a, tpp=100e6),
        followup("settle", "2026-03-01T10:00:01Z", "a1", "alpha-a", job_id="1", status=200, settled=True),
        decision("2026-03-01T10:00:10Z", "alpha-b", "a2", counters=[(*held[0], 100e6)], countries=alpha_b, tpp=100e6),
        decision("2026-03-01T10:00:20Z", "beta", "b1", counters=[("tenant:beta", "held", 252_999_999.0)],
                 countries=beta, tier=1, basis="tier1_uncapped", tpp=252_999_999.0),
        decision("2026-03-01T10:00:30Z", "alpha-a", "a3", counters=[(*held[0], 53e6)], countries=alpha_a, tpp=53e6),
        followup("refund", "2026-03-01T10:00:40Z", "a2", "alpha-b", reason="upstream_status_502", refunded=True),
        decision("2026-03-01T10:00:45Z", "beta", "b2", counters=[("tenant:beta", "held", 5.0)], countries=beta,
                 tier=1, basis="tier1_uncapped", tpp=5.0, outcome="deny", code="quota_tenant_tpp"),
        decision("2026-03-01T10:00:50Z", "beta", "b3", counters=[("tenant:beta", "held", 1.0)], countries=beta,
                 tier=1, basis="tier1_uncapped", tpp=1.0),
    ]  # fmt: skip


def test_aia_trigger_golden(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    """A consignee is the group; it reaches 253M with the admission that takes it there, and a refund takes it back
    under; a refused job counts for nothing, a Tier 1 tenant reaches it by exactly one TPP."""
    write_ledger(tmp_path / "ledger", keys, aia_ledger())
    doc = report(capsys, "aia-trigger", tmp_path / "ledger", keys)
    reached = {r["consignee"]: r for r in rows(doc, "reached")}
    assert set(reached) == {"group:alpha", "tenant:beta"}
    alpha, beta = reached["group:alpha"], reached["tenant:beta"]
    assert (alpha["reached_at"], alpha["reached_by"], alpha["decision_id"]) == ("2026-03-01T10:00:30Z", "alpha-a", "a3")
    assert (alpha["cumulative_tpp"], alpha["below_again_at"], alpha["tenants"]) == (153e6, "2026-03-01T10:00:40Z",
                                                                                    "alpha-a, alpha-b")  # fmt: skip
    assert (beta["reached_at"], beta["decision_id"], beta["cumulative_tpp"]) == ("2026-03-01T10:00:50Z", "b3", 253e6)
    consignees = {r["consignee"]: r for r in rows(doc, "consignees")}
    assert (consignees["group:alpha"]["admissions"], consignees["group:alpha"]["refunds"]) == (3, 1)
    assert consignees["tenant:beta"]["admissions"] == 2
    assert doc["summary"]["consignees that reached it"] == 2
    assert "verified with key " + keys.verifier.key_id in doc["meta"]["statement"]


def test_aia_trigger_counts_from_the_ledgers_start(tmp_path: Path, keys: Keys,
                                                    capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """--from narrows the period, not the cumulative count: alpha reached it inside, beta too, and --to before beta's
    last job leaves beta under."""
    write_ledger(tmp_path / "ledger", keys, aia_ledger())
    doc = report(capsys, "aia-trigger", tmp_path / "ledger", keys, "--from", "2026-03-01T10:00:25Z", "--to",
                 "2026-03-01T10:00:48Z")  # fmt: skip
    reached = {r["consignee"]: r for r in rows(doc, "reached")}
    assert set(reached) == {"group:alpha"} and reached["group:alpha"]["in_period"] is True
    consignees = {r["consignee"]: r["cumulative_tpp"] for r in rows(doc, "consignees")}
    assert consignees == {"group:alpha": 153e6, "tenant:beta": 252_999_999.0}


# -- VEU half-years ---------------------------------------------------------------------------------


def veu_ledger() -> list[dict[str, Any]]:
    """A National VEU tenant admitted on each side of both half-year boundaries, a Universal VEU one in June."""
    nveu: dict[str, Any] = {"basis": "veu_national", "countries": "SA/SA/SA"}
    return [
        decision("2026-06-15T12:00:00Z", "uv-ae", "u1", counters=[("veu:uv-ae", "held", 200.0)],
                 basis="veu_universal", countries="AE/US/US", tpp=200.0),
        decision("2026-06-30T23:59:59Z", "nv-sa", "n1", counters=[("veu:nv-sa", "held", 1000.0)], tpp=1000.0,
                 lease_s=7200.0, **nveu),
        decision("2026-07-01T00:00:00Z", "nv-sa", "n2", counters=[("veu:nv-sa", "held", 500.0)], tpp=500.0, **nveu),
        decision("2026-12-31T23:59:59Z", "nv-sa", "n3", counters=[("veu:nv-sa", "held", 10.0)], tpp=10.0, **nveu),
        decision("2027-01-01T00:00:00Z", "nv-sa", "n4", counters=[("veu:nv-sa", "held", 20.0)], tpp=20.0, **nveu),
    ]  # fmt: skip


def test_veu_half_year_boundaries(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    """The last second of June is the first half, midnight of 1 July the second; reports are due 15 July and
    15 January; each half's peak is held against the NVEU schedule step in force at the time."""
    write_ledger(tmp_path / "ledger", keys, veu_ledger())
    doc = report(capsys, "veu", tmp_path / "ledger", keys)
    halves = {r["half"]: r for r in rows(doc, "halves")}
    assert {h: (r["from"], r["to"], r["due"]) for h, r in halves.items()} == {
        "2026-H1": ("2026-01-01", "2026-06-30", "2026-07-15"),
        "2026-H2": ("2026-07-01", "2026-12-31", "2027-01-15"),
        "2027-H1": ("2027-01-01", "2027-06-30", "2027-07-15"),
    }
    assert halves["2026-H2"]["status"] == "complete" and halves["2027-H1"]["status"].startswith("in progress")
    customers = {(r["half"], r["tenant"]): r for r in rows(doc, "customers")}
    first, second, third = (customers[(h, "nv-sa")] for h in ("2026-H1", "2026-H2", "2027-H1"))
    assert (first["admissions"], first["peak_held_tpp"], first["peak_at"]) == (1, 1000.0, "2026-06-30T23:59:59Z")
    assert (first["cap_at_peak_tpp"], first["held_at_end_tpp"]) == (2_690_250_000.0, 1000.0)
    assert (second["admissions"], second["peak_held_tpp"], second["peak_at"]) == (2, 1500.0, "2026-07-01T00:00:00Z")
    assert (second["cap_at_peak_tpp"], second["held_at_end_tpp"]) == (3_481_500_000.0, 10.0)
    assert (third["admissions"], third["peak_held_tpp"], third["cap_at_peak_tpp"]) == (1, 30.0, 5_064_000_000.0)
    uveu = customers[("2026-H1", "uv-ae")]
    assert (uveu["veu"], uveu["location"], uveu["headquarters"], uveu["cap_at_peak_tpp"]) == (
        "universal", "AE", "US", None)  # fmt: skip
    by_country = {(r["half"], r["veu"], r["country"]): r for r in rows(doc, "capacity_by_country")}
    assert by_country[("2026-H1", "national", "SA")]["peak_held_tpp"] == 1000.0
    assert by_country[("2026-H1", "universal", "AE")]["peak_held_tpp"] == 200.0
    assert by_country[("2026-H2", "national", "SA")]["admissions"] == 2


# -- every kind on a synthetic ledger ---------------------------------------------------------------


@pytest.fixture
def synthetic(tmp_path: Path, keys: Keys) -> Path:
    """A few thousand records of the benchmark's ledger (two chains, every kind of tenant)."""
    from bench.report_ledger import write_ledger as write_synthetic

    write_synthetic(tmp_path / "ledger", 6000, keys.signer, seed=7)
    return tmp_path / "ledger"


def test_the_folds_held_totals_are_the_rebuilds(synthetic: Path) -> None:
    """At every hour, what the fold holds per counter is what the quota rebuild computes from the same records."""
    records = list(records_in_time_order(synthetic))
    fold = Fold(WINDOW_S, TTL_S)
    checks = 0
    next_check = records[0]["ts"] + 3600.0
    for record in records:
        while record["ts"] >= next_check:
            fold.advance(next_check)
            expected = {c.key: c.value for c in fold.builder.state(next_check).counters
                        if c.kind.value == "held" and c.value}  # fmt: skip
            assert {k: v for k, v in fold.held.items() if abs(v) > 1e-6} == pytest.approx(expected)
            checks += 1
            next_check += 3600.0 * 97  # a prime number of hours apart: every phase of the day
        fold.apply(record)
    assert checks > 10
    final = rebuild_state(records, fold.last_ts, idempotency_window_s=WINDOW_S, ownership_ttl_s=TTL_S)
    assert fold.counters_at(fold.last_ts) == {c.key: c.value for c in final.counters}


@pytest.mark.parametrize("kind", KINDS)
def test_every_report_renders_in_every_format_with_the_same_numbers(
    synthetic: Path, keys: Keys, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """JSON and CSV hold the same tables cell for cell; the HTML embeds an SVG per chart, fetches nothing, and shows
    every table; the same command gives the same bytes."""
    doc = report(capsys, kind, synthetic, keys)
    tables = csv_tables(report(capsys, kind, synthetic, keys, fmt="csv"))
    assert set(tables) == {"report", *doc["tables"]}
    for name, table in doc["tables"].items():
        assert [list(r.values()) for r in tables[name]] == [[as_csv_text(v) for v in r.values()] for r in table["rows"]]
    assert sum(len(t["rows"]) for t in doc["tables"].values()) > 0
    page_text = report(capsys, kind, synthetic, keys, fmt="html")
    page = parse_html(page_text)
    assert page.svgs == len(doc["charts"]) >= 1
    assert external_references(page, page_text) == []
    assert id_problems(page_text) == []
    captions = {t["title"] for t in doc["tables"].values()}
    assert captions <= set(page.text)
    assert doc["meta"]["statement"] in page_text
    assert report(capsys, kind, synthetic, keys, fmt="html") == page_text


def test_compute_held_at_end_is_the_rebuilt_quota_state(synthetic: Path, keys: Keys,
                                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """The report's counters at its date are what `quota rebuild` computes; each tenant's held TPP adds up to them."""
    doc = report(capsys, "compute-held", synthetic, keys)
    at = max(r["ts"] for r in records_in_time_order(synthetic))
    state = rebuild_state(records_in_time_order(synthetic), at, idempotency_window_s=WINDOW_S, ownership_ttl_s=TTL_S)
    assert {r["counter"]: r["value"] for r in rows(doc, "held_at_end")} == {c.key: c.value for c in state.counters}
    held = {c.key: c.value for c in state.counters if c.key.startswith(("tenant:", "group:", "veu:"))}
    tenants = rows(doc, "tenants")
    assert sum(t["held_at_end_tpp"] for t in tenants) == pytest.approx(sum(held.values()))
    refused = sum(r["refused"] for r in rows(doc, "refusals_by_cap"))
    quota_codes = ("quota_tenant_tpp", "licence_required")
    denied = sum(1 for r in records_in_time_order(synthetic) if r.get("code") in quota_codes)
    assert refused == denied > 0


# -- dates, verification, arguments -----------------------------------------------------------------


def test_the_report_date_comes_from_the_ledger_or_at(tmp_path: Path, keys: Keys,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """Without --at the date is the last record's time (a checkpoint's, at close); with --at, that date, and what
    is held then."""
    write_ledger(tmp_path / "ledger", keys, veu_ledger())
    doc = report(capsys, "compute-held", tmp_path / "ledger", keys)
    assert doc["meta"]["at"] == "2027-01-01T00:00:00Z"
    earlier = report(capsys, "compute-held", tmp_path / "ledger", keys, "--at", "2026-07-01T00:30:00Z")
    assert earlier["meta"]["at"] == "2026-07-01T00:30:00Z"
    assert {r["counter"]: r["value"] for r in rows(earlier, "held_at_end")}["veu:nv-sa"] == 1500.0


def test_a_ledger_that_does_not_verify_gets_no_report(tmp_path: Path, keys: Keys,
                                                      capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """An edited record: the problem as `ledger verify` prints it, exit 1, nothing written."""
    root = tmp_path / "ledger"
    write_ledger(root, keys, aia_ledger())
    segment = root / "gw-1" / "000001.jsonl"
    lines = segment.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"tenant":"alpha-b"', b'"tenant":"alpha-c"')
    segment.write_bytes(b"".join(lines))
    out = tmp_path / "aia.html"
    code, stdout, err = run_cli(capsys, "report", "aia-trigger", "--ledger", root, "--public-key", keys.public,
                                "--out", out)  # fmt: skip
    assert code == 1 and stdout == ""
    assert f"{segment}:3: edited_record:" in err and "no report written" in err
    assert not out.exists()


def test_a_report_signed_with_another_key_is_refused(tmp_path: Path, keys: Keys,
                                                     capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    write_ledger(tmp_path / "ledger", keys, aia_ledger())
    (tmp_path / "other").mkdir()
    other = Keys(tmp_path / "other")
    code, _, err = run_cli(capsys, "report", "veu", "--ledger", tmp_path / "ledger", "--public-key", other.public)
    assert code == 1 and "wrong_key" in err


def test_out_writes_the_file_and_says_what_was_verified(tmp_path: Path, keys: Keys,
                                                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    write_ledger(tmp_path / "ledger", keys, veu_ledger())
    out = tmp_path / "veu.csv"
    code, stdout, _ = run_cli(capsys, "report", "veu", "--ledger", tmp_path / "ledger", "--public-key", keys.public,
                              "--out", out)  # fmt: skip
    assert code == 0 and out.read_text().startswith("[report]\n")  # the format from the suffix
    assert stdout.startswith(f"wrote {out} (veu, csv): from a ledger whose chains verified with key")


FAILURES = [
    ("to-before-from", ["--from", "2026-03-02", "--to", "2026-03-01"], 2, "--to must come after --from"),
    ("bad-date", ["--from", "yesterday"], 2, "'yesterday' is not an ISO 8601 date"),
    ("near-out-of-range", ["--near", "2"], 2, "must be a fraction in (0, 1]"),
    ("registry-for-another-kind", ["--registry", "{d}/tenants.yaml"], 2, "--registry is read by refusals-access only"),
    ("bad-expect-head", ["--expect-head", "gw-1=zz"], 2, "--expect-head 'gw-1=zz'"),
    ("not-a-ledger", ["--ledger", "{d}/absent"], 1, "absent: not a ledger directory"),
    ("not-a-key", ["--public-key", "{d}/junk.pem"], 1, "junk.pem"),
    ("key-inside-the-ledger", ["--public-key", "{d}/ledger/k.pub.pem"], 1, "a key inside the ledger directory"),
    ("bad-pack", ["--policy", "{d}/pack"], 1, "pack/pack.yaml:1: (file): pack.yaml not found"),
    ("missing-chain", ["--expect-head", f"gw-9={'0' * 64}"], 1, "missing_chain"),
    ("empty-ledger-and-no-date", ["--ledger", "{d}/empty"], 1, "empty: the ledger holds no record to date"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "args", "code", "problem"), FAILURES, ids=[f[0] for f in FAILURES])
def test_report_problems_go_to_stderr_with_their_exit_code(
    tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str], case: str, args: list[str], code: int, problem: str
) -> None:
    write_ledger(tmp_path / "ledger", keys, aia_ledger())
    (tmp_path / "junk.pem").write_text("not a key")
    (tmp_path / "ledger" / "k.pub.pem").write_bytes(keys.public.read_bytes())
    (tmp_path / "pack").mkdir()
    (tmp_path / "empty").mkdir()
    given = [a.replace("{d}", str(tmp_path)) for a in args]  # a later --ledger or --public-key wins
    try:
        got, out, err = run_cli(capsys, "report", "aia-trigger", "--ledger", tmp_path / "ledger", "--public-key",
                                keys.public, *given)  # fmt: skip
    except SystemExit as exc:  # argparse's own refusals
        got, (out, err) = int(str(exc.code)), capsys.readouterr()
    assert (got, out) == (code, ""), err
    assert problem in err


def test_json_is_one_object_with_the_header(tmp_path: Path, keys: Keys, capsys: pytest.CaptureFixture[str]) -> None:
    write_ledger(tmp_path / "ledger", keys, aia_ledger())
    doc = report(capsys, "refusals-access", tmp_path / "ledger", keys)
    assert json.loads(json.dumps(doc)) == doc
    assert doc["meta"]["chains"][0]["instance"] == "gw-1" and doc["meta"]["chains"][0]["hash_chain_only"] == 0
    assert {r["code"]: r["refused"] for r in rows(doc, "by_code")} == {"quota_tenant_tpp": 1}
    tenants = {r["tenant"]: r for r in rows(doc, "tenants")}
    assert tenants["beta"]["keep_records_until"] == "2028-02-29"  # 730 days after 2026-03-01


def test_kyc_expiries_come_from_a_registry_when_given(tmp_path: Path, keys: Keys,
                                                       capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """The ledger keeps statuses only: with --registry the expiries up to 90 days after the report's date (and those
    past) are listed, marked as the registry's."""
    write_ledger(tmp_path / "ledger", keys, aia_ledger())
    registry = BUNDLED_POLICIES / "tenants.example.yaml"
    without = report(capsys, "refusals-access", tmp_path / "ledger", keys)
    assert rows(without, "kyc_expiries") == [] and "give --registry" in without["tables"]["kyc_expiries"]["note"]
    doc = report(capsys, "refusals-access", tmp_path / "ledger", keys, "--registry", registry)
    expiries = [tuple(r.values()) for r in rows(doc, "kyc_expiries")]
    assert expiries == [("lapsed-in", "verified", "2025-01-10", "expired")]
    kyc = {r["tenant"]: r for r in rows(doc, "kyc")}
    assert (kyc["alpha-a"]["kyc_recorded"], kyc["alpha-a"]["registry_expires_at"]) == ("verified", None)
