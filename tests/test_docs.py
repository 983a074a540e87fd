"""The operator documentation (README.md and docs/) stays true to the code.

* every fenced gateway.yaml in the docs passes the strict loader `exportgate check` starts with;
  a block is marked by the HTML comment on the line before its fence (docs/development.md says how):
  `<!-- gateway.yaml -->` a whole file, `<!-- gateway.yaml fragment -->` top-level sections (a
  minimal upstream is added when the block has none), `<!-- gateway.yaml upstream -->` entries of
  `upstreams:`; a yaml block whose top-level keys are all gateway.yaml keys must carry a mark;
* the refusal-code table (docs/refusals.md) is the code's table, code for code and status for status;
* every metric the docs name is exported, and every exported exportgate_* metric is documented;
* every alert of deploy/prometheus/rules.yaml has a runbook in docs/operations.md;
* every relative link resolves to a file, and to a heading when it names an anchor;
* nothing cites documents outside the repository.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gateway.adapters.ledger.signing import generate
from gateway.adapters.metrics import Metrics
from gateway.config.located import ConfigError, load_text
from gateway.config.settings import parse_settings
from gateway.core.codes import CODES, Code

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

# The top-level keys parse_settings knows: a yaml block made of these alone is a gateway.yaml.
SETTINGS_KEYS = {
    "listen", "admin", "instance_id", "policy", "ledger", "quota", "auth", "upstreams", "trusted_proxies",
    "limits", "reload", "workers", "reconcile", "shutdown", "log", "decision", "envoy_grpc", "admission_webhook",
}  # fmt: skip
MINIMAL_UPSTREAM = "upstreams: [{url: 'http://127.0.0.1:6820'}]\n"
MARK = re.compile(r"^<!--\s*gateway\.yaml(?:\s+(fragment|upstream))?\s*-->$")
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    text: str
    mark: str | None  # None: unmarked; "": a whole gateway.yaml; "fragment" or "upstream"

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> Iterator[Block]:
    """The fenced code blocks of a page, each with the gateway.yaml mark on the line before it."""
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        opened = FENCE.match(lines[i])
        if opened is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        before = lines[i - 1].strip() if i > 0 else ""
        marked = MARK.match(before)
        mark = (marked.group(1) or "") if marked else None
        yield Block(page, i + 1, opened.group(1), "\n".join(lines[i + 1 : end]) + "\n", mark)
        i = end + 1


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
CONFIG_BLOCKS = [b for b in ALL_BLOCKS if b.mark is not None]


def as_gateway_yaml(block: Block) -> str:
    """The block as a whole gateway.yaml (its own lines first, so problems keep their line numbers)."""
    if block.mark == "upstream":
        return "upstreams:\n" + block.text
    if block.mark == "fragment" and not re.search(r"^upstreams:", block.text, re.M):
        return block.text + MINIMAL_UPSTREAM
    return block.text


def test_the_docs_hold_marked_gateway_configs() -> None:
    """The convention is in use: the reference, the walk-through and the worked examples are checked."""
    assert len(CONFIG_BLOCKS) >= 8
    assert {b.page.name for b in CONFIG_BLOCKS} >= {"README.md", "configuration.md"}


def test_every_gateway_yaml_lookalike_is_marked() -> None:
    """A yaml block that parses to gateway.yaml's top-level keys must be marked, so it is checked below."""
    unmarked = []
    for b in ALL_BLOCKS:
        if b.mark is not None or b.lang != "yaml":
            continue
        try:
            doc = yaml.safe_load(b.text)
        except yaml.YAMLError:
            continue
        if isinstance(doc, dict) and doc and set(doc) <= SETTINGS_KEYS:
            unmarked.append(b.where)
    assert unmarked == []


@pytest.mark.parametrize("block", CONFIG_BLOCKS, ids=[b.where for b in CONFIG_BLOCKS])
def test_every_marked_config_passes_the_strict_loader(block: Block, tmp_path: Path) -> None:
    """What `exportgate check` loads first: unknown keys, types, values, listener clashes, cross-references.

    Relative paths resolve against a fresh directory holding the walk-through's signing key
    (`exportgate keys generate --out keys`), the one file the loader itself insists exists."""
    assert block.lang == "yaml", f"{block.where}: a gateway.yaml mark on a ```{block.lang} block"
    (tmp_path / "keys").mkdir()
    generate(tmp_path / "keys" / "ledger-signing.pem", tmp_path / "keys" / "ledger-signing.pub.pem")
    try:
        parse_settings(load_text(as_gateway_yaml(block), block.where), tmp_path, {})
    except ConfigError as exc:
        pytest.fail("\n".join(str(p) for p in exc.problems))


def test_a_broken_config_block_would_be_caught(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key in a marked fragment is refused with its line."""
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- gateway.yaml fragment -->\n```yaml\nlimits:\n  max_bodybytes: 10\n```\n")
    (block,) = blocks(page)
    with pytest.raises(ConfigError) as caught:
        parse_settings(load_text(as_gateway_yaml(block), "page"), tmp_path, {})
    assert [str(p) for p in caught.value.problems] == ["page:2: limits.max_bodybytes: unknown key"]


REFUSAL_ROW = re.compile(r"^\| `([a-z0-9_]+)` \| (\d{3})\b", re.M)


def test_the_refusal_table_is_the_codes_table() -> None:
    """docs/refusals.md lists every code of gateway/core/codes.py once, with the status the code answers."""
    text = (DOCS / "refusals.md").read_text()
    rows = REFUSAL_ROW.findall(text)
    documented = [code for code, _ in rows]
    assert len(documented) == len(set(documented)), "a code is listed twice"
    assert set(documented) == {c.value for c in Code}
    assert {code: int(status) for code, status in rows} == {c.value: info.status for c, info in CODES.items()}


METRIC = re.compile(r"\b(?:exportgate|process|python)_[a-z0-9_]+")


def exported_metrics() -> tuple[set[str], set[str]]:
    """(every family and sample name of the gateway's registry, the families named exportgate_*)."""
    names: set[str] = set()
    families: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.name.startswith("exportgate_"):
            families.add(family.name)
    suffixes = ("_bucket", "_sum", "_count", "_total", "_created", "_info")
    return names | {n + s for n in names for s in suffixes}, families


def prose(page: Path) -> str:
    """A page without its fenced blocks (whose names are Envoy clusters, shell and the like, not metrics)."""
    kept, outside_fence = [], True
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            outside_fence = not outside_fence
        elif outside_fence:
            kept.append(line)
    return "\n".join(kept)


def test_every_metric_the_docs_name_is_exported() -> None:
    """A metric in a doc's text, a runbook or a table that the gateway does not export is an error."""
    exported, _ = exported_metrics()
    named = {(page.relative_to(ROOT).as_posix(), m) for page in PAGES for m in METRIC.findall(prose(page))}
    assert len(named) >= 20
    assert sorted(f"{page}: {m}" for page, m in named if m not in exported) == []


def test_every_exported_metric_is_documented() -> None:
    """The metrics reference (docs/operations.md) names every exportgate_* family the registry holds."""
    _, families = exported_metrics()
    text = (DOCS / "operations.md").read_text()
    documented = set(METRIC.findall(text))
    missing = sorted(f for f in families if not {f, f + "_total", f + "_info"} & documented)
    assert missing == []


def test_every_alert_has_a_runbook() -> None:
    """Each alert of deploy/prometheus/rules.yaml has its section in docs/operations.md: meaning, checks, fixes."""
    rules = yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules.yaml").read_text())
    alerts = [rule["alert"] for group in rules["groups"] for rule in group["rules"]]
    text = (DOCS / "operations.md").read_text()
    sections = dict(re.findall(r"^### (Exportgate\w+)\n(.*?)(?=^#{1,3} |\Z)", text, re.M | re.S))
    assert sorted(sections) == sorted(alerts)
    for alert, body in sections.items():
        for part in ("**What it means.**", "**First checks.**", "**Fixes.**"):
            assert part in body, f"{alert}: no {part}"


LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but - and _ dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found: set[str] = set()
    outside_fence = True
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            outside_fence = not outside_fence
        elif outside_fence and (heading := re.match(r"^#{1,6} (.+)$", line)):
            base = slug(heading.group(1))
            name, n = base, 0
            while name in found:
                n += 1
                name = f"{base}-{n}"
            found.add(name)
    return found


def links(page: Path) -> Iterator[tuple[int, str]]:
    outside_fence = True
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if line.startswith("```"):
            outside_fence = not outside_fence
        elif outside_fence:
            for target in LINK.findall(line):
                yield number, target


def test_every_relative_link_resolves() -> None:
    """Links between pages, and to files of the repository, name something that is there."""
    broken = []
    checked = 0
    for page in PAGES:
        for number, target in links(page):
            if re.match(r"[a-z]+:", target):
                continue  # https:, mailto:
            checked += 1
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            where = f"{page.relative_to(ROOT)}:{number}: {target}"
            if not resolved.exists():
                broken.append(f"{where}: no such file")
            elif not resolved.is_relative_to(ROOT):
                broken.append(f"{where}: outside the repository")
            elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                broken.append(f"{where}: no such heading")
    assert broken == []
    assert checked >= 40


def test_slugs_follow_github() -> None:
    assert slug("Configuration reference (`gateway.yaml`)") == "configuration-reference-gatewayyaml"
    assert slug("Decision endpoints (nginx, Envoy)") == "decision-endpoints-nginx-envoy"
    assert slug("Ray's CLI") == "rays-cli"


# Documents that live outside this repository; code and docs cite the repository or the regulation instead.
OUTSIDE = re.compile(r"\.\./shared|\bdesign\.md|\bdomain\.md|\bstyle\.md|(?<![/(])\bschedulers\.md|\bdesign doc", re.I)


def cited_files() -> Iterator[Path]:
    yield from PAGES
    for top in ("gateway", "tests", "bench", "deploy"):
        for path in sorted((ROOT / top).rglob("*")):
            kept = path.suffix in {".py", ".yaml", ".yml", ".json", ".lua", ".md", ".conf"}
            if kept and path.is_file() and path != Path(__file__).resolve():
                yield path
    yield from (ROOT / name for name in ("Makefile", "Dockerfile", "pyproject.toml"))


def test_nothing_cites_documents_outside_the_repository() -> None:
    """`design.md`, `domain.md`, ... of a directory beside the repository are not shipped with it."""
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in cited_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert found == []


def test_readme_leads_with_the_two_commands() -> None:
    """One sentence of what it is, then `make serve` and `make test`; the rest lives in docs/."""
    lines = README.read_text().splitlines()
    assert len(lines) < 200
    head = "\n".join(lines[:12])
    assert head.index("make serve") < head.index("make test")
    assert "(docs/README.md)" in README.read_text()
