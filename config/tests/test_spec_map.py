"""docs/spec-map.md, the map from each billing rule (docs/payment-plan.md §1–§10, §12) to the
code that implements it and the tests that prove it, stays true to the code.

Every backticked reference in the map must name something that exists: `path.py:name` or
`path.py:Class.method` a top-level def, class or assignment (or a name defined in the body
of a top-level class), `path.py::test_name` or `path.py::TestClass::test_method` a test
function that is not marked xfail or skip. Every section §1–§10 and §12 of the payment plan has
its table in the map, and every row says what implements the rule and either which tests
prove it or, plainly, `no test`. The files are read and parsed with `ast`; nothing is
imported and no database is needed."""

from __future__ import annotations

import ast
import functools
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SPEC_MAP = ROOT / "docs" / "spec-map.md"
PAYMENT_PLAN = ROOT / "docs" / "payment-plan.md"
# §11 holds worked examples (no rules of its own); §12 (after finalization) is mapped as it is built.
SECTIONS = (*range(1, 11), 12)
MAX_RULE_WORDS = 15

BACKTICKED = re.compile(r"`([^`\n]+)`")
CODE_REF = re.compile(r"(?P<path>[\w./-]+\.py):(?P<name>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)")
TEST_REF = re.compile(r"(?P<path>[\w./-]+\.py)::(?P<name>[A-Za-z_]\w*(?:::[A-Za-z_]\w*)?)")
LOOKS_LIKE_A_REF = re.compile(r"\.py\b")
PLAN_SECTION = re.compile(r"^## (\d+)\. (.+?)\s*$")
MAP_SECTION = re.compile(r"^## §(\d+) (.+?)\s*$")
NO_TEST = re.compile(r"\bno test\b", re.IGNORECASE)
HEADER = ["rule", "implemented by", "tested by"]


@dataclass(frozen=True)
class Ref:
    """One backticked reference: `path:name` (code) or `path::name` (a test)."""

    path: str
    name: str
    is_test: bool
    line: int

    def __str__(self) -> str:
        return f"{self.path}{'::' if self.is_test else ':'}{self.name}"


@dataclass(frozen=True)
class Row:
    section: int
    line: int
    rule: str
    implemented: str
    tested: str


# --- Parsing -----------------------------------------------------------------------------


def parse_ref(token: str, line: int) -> Ref | None:
    """A backticked token as a reference, or None if it is not shaped like one."""
    if match := TEST_REF.fullmatch(token):
        return Ref(match["path"], match["name"], True, line)
    if match := CODE_REF.fullmatch(token):
        return Ref(match["path"], match["name"], False, line)
    return None


def references(text: str, line: int = 0) -> tuple[list[Ref], list[str]]:
    """The references backticked in `text`, and the backticked tokens that mention a
    Python file without being a well-formed reference."""
    refs, malformed = [], []
    for token in BACKTICKED.findall(text):
        ref = parse_ref(token.strip(), line)
        if ref is not None:
            refs.append(ref)
        elif LOOKS_LIKE_A_REF.search(token):
            malformed.append(token)
    return refs, malformed


def cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def parse_map(text: str) -> tuple[dict[int, str], list[Row], list[str]]:
    """The map's sections (number → title), its table rows, and format problems."""
    sections: dict[int, str] = {}
    rows: list[Row] = []
    problems: list[str] = []
    section: int | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if heading := MAP_SECTION.match(line):
            section = int(heading[1])
            if section in sections:
                problems.append(f"line {number}: section §{section} appears twice")
            sections[section] = heading[2]
            continue
        if line.startswith("## "):
            section = None
            continue
        if not line.lstrip().startswith("|"):
            continue
        row = cells(line)
        if row == HEADER or all(set(cell) <= set("-: ") for cell in row):
            continue
        if section is None:
            problems.append(f"line {number}: a table row outside any '## §N Title' section")
            continue
        if len(row) != 3:
            problems.append(f"line {number}: {len(row)} columns, expected | rule | implemented by | tested by |")
            continue
        rows.append(Row(section, number, *row))
    return sections, rows, problems


def plan_sections(text: str) -> dict[int, str]:
    return {int(m[1]): m[2] for line in text.splitlines() if (m := PLAN_SECTION.match(line))}


# --- Resolving references ----------------------------------------------------------------


def _defined(body: list[ast.stmt]) -> dict[str, ast.stmt]:
    """Names a module or class body defines: def, class, plain or annotated assignment."""
    names: dict[str, ast.stmt] = {}
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(element, ast.Name):
                        names[element.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names[node.target.id] = node
    return names


@functools.cache
def module_names(root: Path, path: str) -> dict[str, ast.stmt] | None:
    """Top-level names of a file under `root`, or None if it does not exist."""
    file = root / path
    if not file.is_file():
        return None
    return _defined(ast.parse(file.read_text(encoding="utf-8"), filename=path).body)


def _disabled(node: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """'xfail' or 'skip' when a decorator says the test does not prove anything."""
    for decorator in node.decorator_list:
        call = decorator.func if isinstance(decorator, ast.Call) else decorator
        if isinstance(call, ast.Attribute) and call.attr in ("xfail", "skip"):
            return call.attr
    return None


def problem_with(ref: Ref, root: Path = ROOT) -> str | None:
    """Why `ref` does not name what it says, or None when it does."""
    if ".." in Path(ref.path).parts or ref.path.startswith("/"):
        return "the path must be relative to the project root"
    names = module_names(root, ref.path)
    if names is None:
        return "no such file"
    separator = "::" if ref.is_test else "."
    owner, _, member = ref.name.partition(separator)
    node = names.get(owner)
    if node is None:
        return f"'{owner}' is not defined at the top level of the file"
    if member:
        if not isinstance(node, ast.ClassDef):
            return f"'{owner}' is not a class"
        node = _defined(node.body).get(member)
        if node is None:
            return f"class '{owner}' defines no '{member}'"
    if not ref.is_test:
        return None
    if not Path(ref.path).name.startswith("test_"):
        return "a test reference must point into a test_*.py file"
    if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or not node.name.startswith("test"):
        return f"'{ref.name}' is not a test function"
    if reason := _disabled(node):
        return f"'{ref.name}' is marked {reason}: it proves nothing"
    return None


def missing(refs: list[Ref], root: Path = ROOT) -> list[str]:
    return [f"line {ref.line}: `{ref}`: {why}" for ref in refs if (why := problem_with(ref, root)) is not None]


def row_problems(row: Row) -> list[str]:
    """What a row lacks: a short rule, code references only under 'implemented by', test
    references (or the words 'no test') under 'tested by'."""
    where = f"line {row.line} (§{row.section} '{row.rule[:40]}')"
    problems = []
    if not row.rule:
        problems.append(f"{where}: no rule text")
    elif len(row.rule.split()) > MAX_RULE_WORDS:
        problems.append(f"{where}: the rule has {len(row.rule.split())} words, at most {MAX_RULE_WORDS}")
    found, bad = references(row.implemented, row.line)
    if bad or any(ref.is_test for ref in found):
        problems.append(f"{where}: 'implemented by' holds something other than `path.py:name` references")
    if not any(not ref.is_test for ref in found):
        problems.append(f"{where}: 'implemented by' names no `path.py:name`")
    found, bad = references(row.tested, row.line)
    if bad or any(not ref.is_test for ref in found):
        problems.append(f"{where}: 'tested by' holds something other than `path.py::test` references")
    if not any(ref.is_test for ref in found) and not NO_TEST.search(row.tested):
        problems.append(f"{where}: 'tested by' names no test and does not say 'no test'")
    return problems


# --- The map as it is --------------------------------------------------------------------


@pytest.fixture(scope="module")
def spec_map() -> str:
    return SPEC_MAP.read_text(encoding="utf-8")


def test_it_finds_every_reference_of_the_map_in_the_code(spec_map: str) -> None:
    refs: list[Ref] = []
    malformed: list[str] = []
    for number, line in enumerate(spec_map.splitlines(), start=1):
        found, bad = references(line, number)
        refs += found
        malformed += [f"line {number}: `{token}` is not `path.py:name` nor `path.py::test`" for token in bad]
    assert len(refs) > 100, "the map has lost its references"
    problems = malformed + missing(refs)
    assert problems == [], "docs/spec-map.md names what does not exist:\n" + "\n".join(problems)


def test_it_maps_every_section_of_the_payment_plan(spec_map: str) -> None:
    plan = plan_sections(PAYMENT_PLAN.read_text(encoding="utf-8"))
    assert set(SECTIONS) <= set(plan), f"docs/payment-plan.md lost a section: {sorted(set(SECTIONS) - set(plan))}"
    sections, rows, problems = parse_map(spec_map)
    assert problems == [], "\n".join(problems)
    counts = {n: sum(1 for row in rows if row.section == n) for n in sections}
    wrong = []
    for n in SECTIONS:
        if n not in sections:
            wrong.append(f"no '## §{n} {plan[n]}' section")
        elif sections[n] != plan[n]:
            wrong.append(f"§{n} is titled '{sections[n]}', the payment plan says '{plan[n]}'")
        elif counts[n] == 0:
            wrong.append(f"§{n} has no row")
    wrong += [f"§{n} is not a mapped section of the payment plan" for n in sections if n not in SECTIONS]
    assert wrong == [], "\n".join(wrong)


def test_it_says_for_every_row_what_implements_and_what_tests_the_rule(spec_map: str) -> None:
    _, rows, problems = parse_map(spec_map)
    assert rows, "no rows found"
    problems += [problem for row in rows for problem in row_problems(row)]
    assert problems == [], "\n".join(problems)


# --- The checker itself ------------------------------------------------------------------


FAKE_CODE = """
LIMIT = 3
TOTAL: int = 0


def bill() -> None:
    pass


class Invoice:
    status = "draft"

    def finalize(self) -> None:
        pass
"""
FAKE_TESTS = """
import pytest


def helper() -> None:
    pass


def test_it_bills() -> None:
    pass


@pytest.mark.xfail(strict=True, reason="not yet")
def test_it_will_bill_one_day() -> None:
    pass


class TestInvoice:
    def test_it_finalizes(self) -> None:
        pass
"""


def test_it_catches_a_bad_reference(tmp_path: Path) -> None:
    (tmp_path / "app" / "tests").mkdir(parents=True)
    (tmp_path / "app" / "billing.py").write_text(FAKE_CODE, encoding="utf-8")
    (tmp_path / "app" / "tests" / "test_billing.py").write_text(FAKE_TESTS, encoding="utf-8")
    good = [
        "app/billing.py:bill",
        "app/billing.py:LIMIT",
        "app/billing.py:TOTAL",
        "app/billing.py:Invoice",
        "app/billing.py:Invoice.finalize",
        "app/billing.py:Invoice.status",
        "app/tests/test_billing.py::test_it_bills",
        "app/tests/test_billing.py::TestInvoice::test_it_finalizes",
    ]
    bad = {
        "app/billing.py:charge": "not defined at the top level",
        "app/nowhere.py:bill": "no such file",
        "app/billing.py:Invoice.refund": "defines no 'refund'",
        "app/billing.py:bill.inner": "is not a class",
        "../billing.py:bill": "relative to the project root",
        "app/tests/test_billing.py::test_it_was_never_written": "not defined at the top level",
        "app/tests/test_billing.py::helper": "not a test function",
        "app/tests/test_billing.py::test_it_will_bill_one_day": "marked xfail",
        "app/tests/test_billing.py::TestInvoice::test_it_refunds": "defines no 'test_it_refunds'",
        "app/billing.py::bill": "test_*.py file",
    }
    line = f"| A fake rule | {'<br>'.join(f'`{r}`' for r in good[:6])} | {', '.join(f'`{r}`' for r in good[6:])} |"
    line += " " + " ".join(f"`{r}`" for r in bad)
    refs, malformed = references(line, 7)
    assert malformed == []
    assert [str(ref) for ref in refs] == good + list(bad)
    found = missing(refs, tmp_path)
    assert len(found) == len(bad), found
    for entry, (ref, why) in zip(found, bad.items(), strict=True):
        assert entry.startswith(f"line 7: `{ref}`: ") and why in entry, entry


def test_it_catches_a_malformed_reference_and_an_incomplete_row() -> None:
    text = "\n".join(
        [
            "## §2 Money and time",
            "| rule | implemented by | tested by |",
            "|---|---|---|",
            "| Cycles are half-open | `billing/engine/cycles.py Cycle.contains` | |",
            "| Zones are IANA names | `offices/timezones.py:validate_timezone` | no test: nothing checks it |",
            "| Tests in the wrong column | `billing/tests/engine/test_cycles.py::test_it_refuses_an_unknown_time_zone` "
            "| `offices/timezones.py:validate_timezone` |",
            "| A rule far too long to read at a glance, with more than fifteen words in all of it "
            "| `offices/timezones.py:validate_timezone` | no test |",
        ]
    )
    sections, rows, problems = parse_map(text)
    assert (sections, problems, [row.line for row in rows]) == ({2: "Money and time"}, [], [4, 5, 6, 7])
    found = {row.line: row_problems(row) for row in rows}
    assert [len(found[n]) for n in (4, 5, 6, 7)] == [3, 0, 4, 1], found
    assert "other than `path.py:name`" in found[4][0] and "names no `path.py:name`" in found[4][1]
    assert "does not say 'no test'" in found[4][2]
    assert "words, at most 15" in found[7][0]
    assert parse_map("| orphan | `a.py:b` | no test |")[2] == ["line 1: a table row outside any '## §N Title' section"]
