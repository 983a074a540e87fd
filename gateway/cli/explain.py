"""`exportgate explain`: the decision a request would get, and why, without forwarding or reserving anything."""

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from gateway.adapters.auth import Authenticator
from gateway.cli.offline import add_sources, opened, run_offline, usage_problem
from gateway.core.explain import parse_at
from gateway.http.explain import Explainer, Question


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    explain = sub.add_parser(
        "explain",
        help="explain the decision a request would get (nothing forwarded, reserved or recorded)",
        description="Runs the proxy's stages on the request as gateway.yaml configures them, against the quota "
        "state in Redis or a ledger. Slurm cluster facts and Ray cluster capacity are not fetched: jobs are "
        "priced from the configured scheduler options (the admin API's explain uses the live ones).",
    )
    who = explain.add_mutually_exclusive_group(required=True)
    who.add_argument("--tenant", help="the tenant's id")
    who.add_argument("--token", help="one of the tenant's bearer tokens (verified with gateway.yaml's issuers)")
    explain.add_argument("--method", required=True, help="GET, POST, ...")
    explain.add_argument("--path", required=True, help="as the client sends it, query included")
    explain.add_argument("--body-file", metavar="FILE", help="the request body ('-': standard input)")
    explain.add_argument("--content-type", default="application/json")
    explain.add_argument("--idempotency-key")
    explain.add_argument("--at", type=_at, metavar="DATE", help="decide as on DATE (ISO 8601); counters are read now")
    explain.add_argument("--format", choices=("text", "json"), default="text")
    add_sources(explain)
    explain.set_defaults(func=explain_command)


def _at(text: str) -> float:
    try:
        return parse_at(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def explain_command(args: argparse.Namespace) -> int:
    problem = usage_problem(args)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    try:
        body = _body(args.body_file)
    except OSError as exc:
        print(f"error: {args.body_file}: {exc.strerror}", file=sys.stderr)
        return 1
    asked = Question(
        method=args.method.upper(), path=args.path, tenant_id=args.tenant, token=args.token, body=body,
        content_type=args.content_type, idempotency_key=args.idempotency_key, at=args.at,
    )  # fmt: skip
    answer = run_offline(_explain(args, asked))
    if answer is None:
        return 1
    print(json.dumps(answer, indent=2) if args.format == "json" else render(answer))
    return 0


def _body(name: str | None) -> bytes | None:
    if name is None:
        return None
    return sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()


async def _explain(args: argparse.Namespace, asked: Question) -> dict[str, Any]:
    async with opened(args) as parts:
        auth = None
        if asked.token is not None:
            auth = Authenticator(parts.settings.issuers)
            await auth.start()
        try:
            explainer = Explainer(parts.policy, parts.upstreams, parts.store, parts.settings.limits, auth=auth)
            answer = await explainer.explain(asked)
        finally:
            if auth is not None:
                await auth.close()
        return answer | {"quota_source": parts.source}


# -- text ------------------------------------------------------------------------------------------


def _n(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and (abs(value) >= 1e15 or (value and abs(value) < 1e-3)):
        return f"{value:.4g}"
    if isinstance(value, int | float):
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    return str(value)


def _tier_lines(tier: dict[str, Any]) -> list[str]:
    lines = [f"tier: {_n(tier['tier'])} ({tier['detail']})"]
    for c in tier["countries"]:
        alias = f" as {c['counted_as']}" if c["counted_as"] and c["counted_as"] != c["country"] else ""
        dated = "".join(
            f" {word} {c[key]}" for word, key in (("since", "listed_since"), ("until", "listed_until")) if c[key]
        )
        mark = "  <- deciding" if c["deciding"] else ""
        lines.append(f"  {c['role']:<13} {c['country'] or '-'}{alias}: tier {_n(c['tier'])}, {c['list']}{dated}{mark}")
    return lines


def _price_lines(price: dict[str, Any]) -> list[str]:
    lines = [f"price: {price['total_gpus']} GPUs for {_n(price['walltime_s'])} s"]
    for g in price["gpus"]:
        lines.append(
            f"  {g['count']} x {g['model']} ({g['gpus']} per copy x {g['concurrency']} at once; "
            f"{_n(g['tpp_per_chip'])} TPP each, {'controlled' if g['controlled'] else 'not controlled'})"
        )
    if "held_tpp" in price:
        lines.append(
            f"  held {_n(price['held_tpp'])} TPP, {_n(price['tpp_hours'])} TPP-hours, "
            f"{_n(price['training_ops'])} training operations"
        )
    lines.append(f"  lineage {price['lineage'] or '-'}, purpose {price['purpose'] or '-'}, "
                 f"parameters {_n(price.get('parameters'))}")  # fmt: skip
    for s in price["sources"]:
        where = f"{s['field']} = {json.dumps(s['value'])}" if s["field"] else f"{s['note']}: {_n(s['value'])}"
        lines.append(f"  {s['quantity']:<11} from {where}")
    return lines


def _quota_lines(quota: dict[str, Any]) -> list[str]:
    lines = [f"caps (read now, nothing reserved; basis {quota['basis']}):"]
    lines.append(f"  {'cap':<18} {'held':>16} {'cap':>16} {'room':>16} {'job takes':>16}  state")
    for c in quota["counters"]:
        flag = "  <- refuses" if c["refuses"] else ""
        lines.append(
            f"  {c['cap_name']:<18} {_n(c['held_now']):>16} {_n(c['cap']):>16} {_n(c['room_now']):>16} "
            f"{_n(c['job_takes']):>16}  {c['state']}{flag}"
        )
    for kind, room in quota["headroom"].items():
        lines.append(f"  room after this job: {kind} {_n(room['amount'])} (binding: {room['binding']})")
    return lines


def _weights_lines(w: dict[str, Any]) -> list[str]:
    lines = [f"weights: {w['op']} {w['bucket']}/{w['key']} ({w['s3_op']}), basis {w['basis']}"]
    lineage = w["lineage"]
    if lineage is None:
        lines.append("  the object holds no lineage the catalogue names")
        return lines
    lines.append(
        f"  lineage {lineage['lineage']} (from {w['lineage_source']}): {_n(lineage['total_ops'])} operations "
        f"({_n(lineage['counted_ops'])} counted by the gateway, {_n(lineage['declared_ops'])} declared), "
        f"parameters {_n(lineage['parameters'])}, domain {lineage['data_domain'] or '-'}"
    )
    state = "controlled" if lineage["controlled"] else "not controlled"
    released = f" (released: {lineage['released_by']})" if lineage["released_by"] else ""
    lines.append(f"  {state}{released}")
    lines += [f"  {c['rule']} ({c['state']}): {c['detail']}" for c in lineage["controls"]]
    if "storage_compliant" in w:
        lines.append(f"  storage: {w['storage_facility'] or 'bucket not declared to meet the storage conditions'}")
    return lines


def render(x: dict[str, Any]) -> str:
    """The explanation for a person at a terminal."""
    r = x["request"]
    head = f"decision: {x['decision']}"
    if x["code"]:
        head += f" {x['code']} ({x['status']}) at {x['decided_at']}"
    lines = [head] + ([f"  {x['detail']}"] if x["detail"] else [])
    route = f"route {r['route']} ({r['route_kind']})" if r["route"] else "no route"
    lines.append(f"request: {r['method']} {r['path']} -> upstream {r['upstream']}, {route}; decided as on {x['at']}")
    t = x["tenant"]
    if t is not None:
        kyc = t["kyc"]
        lines.append(f"tenant: {t['id']} ({t['name']}), KYC {kyc['effective']} (expires {kyc['expires_at'] or '-'})")
    if x["tier"] is not None:
        lines += _tier_lines(x["tier"])
    if x["reasons"]:
        lines.append("reasons:")
        for reason in x["reasons"]:
            since = f" from {reason['enforced_from']}" if reason["enforced_from"] else ""
            lines.append(f"  {reason['code']}: rule {reason['rule'] or '-'}, {reason['state']}{since}")
            lines.append(f"    {reason['detail']}" + (f" [{reason['citation']}]" if reason["citation"] else ""))
    if x["rules"]:
        lines.append("rules considered:")
        for rule in x["rules"]:
            since = f"from {rule['enforced_from']}" if rule["enforced_from"] else "from the start"
            objection = rule["objection"] or "no objection"
            lines.append(f"  {rule['rule']:<19} {rule['state']} ({since}): {objection}")
    if x["price"] is not None:
        lines += _price_lines(x["price"])
    if x["quota"] is not None:
        lines += _quota_lines(x["quota"])
    if x.get("weights") is not None:
        lines += _weights_lines(x["weights"])
    lines += [f"note: {note}" for note in x["notes"]]
    lines.append(f"policy {x['policy']['name']} {x['policy']['version']}, registry {x['registry']}")
    if "quota_source" in x:
        lines.append(f"quota state from {x['quota_source']}")
    return "\n".join(lines)
