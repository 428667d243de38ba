"""Duplicated code in the package (issue 19, acceptance 3), found by a scan that runs in CI.

Two places are a *pair* when they share a run of six or more lines of the same shape: each line reduced to its
tokens with names read as ``N``, strings as ``S`` and numbers as ``0`` (keywords, ``self`` and punctuation kept;
a docstring line as its text: prose is a copy only when it is the same). Lines that carry too little to tell code
apart are passed over: blank lines, comments, imports, lone punctuation (as the ``duplicates`` tool does), lines of
fewer than two names or values, single items of a parameter list, a literal or a dataclass, runs that repeat one
line, and runs found in more than eight places (too common to be one piece of logic). The pairs are counted per
pair of files, as the tool does.

Where it differs from the tool: the tool does read the items of a parameter list, so two constructors whose
signatures list six scalar arguments in a row form a pair there (it marks them "boilerplate"). At 8fb3499 the tool
finds 3 pairs in the package: ``metrics/functional.py`` with itself (the twelve functional twins of the metric
classes, whose identical typed signatures are the public API) and two such signature pairs of the data modules
(``SpuriousMNIST1D`` ~ ``SpuriousDigits``, ``MNIST1DLongTail`` ~ ``SpuriousMNIST1D``); this scan finds the first.

Some logic must exist exactly once however it is written; the second half of this file finds its tell-tale lines.
"""

import io
import keyword
import re
import tokenize
from collections import defaultdict
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "lightning_autobalance"
RUN = 6  # lines a pair shares at least
TOO_COMMON = 8  # a run in more places than this is a pattern, not a copy
MAX_PAIRS = 2  # the limit
PUNCTUATION = set("()[]{},:;.")
SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
# one item of a parameter list, dict or list literal (``lr: float = 0.05,``, ``"key": "value",``): a declaration
VALUE = r"([NS0]|None|True|False)"
ANNOTATION = rf"{VALUE}( (\[|\]|,|\||\.|{VALUE}))*"  # a type (``N [ N , N ] | None``) or a value
ITEM = re.compile(rf"(\*{{1,2}} )?{VALUE}( : {ANNOTATION}( = -? ?{VALUE})?)?( ,)?")
FSTRING_PARTS = {getattr(tokenize, n, -1) for n in ("FSTRING_START", "FSTRING_MIDDLE", "FSTRING_END")}


def token_shape(token: tokenize.TokenInfo) -> str:
    if token.type == tokenize.NAME:
        return token.string if keyword.iskeyword(token.string) or token.string in ("self", "cls") else "N"
    if token.type == tokenize.STRING or token.type in FSTRING_PARTS:
        return "S"
    if token.type == tokenize.NUMBER:
        return "0"
    return token.string


def line_shapes(source: str) -> list[tuple[int, str]]:
    """``(line number, shape)`` of every line of ``source`` that counts."""
    rows: dict[int, list[str]] = defaultdict(list)
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in SKIP:
            continue
        if token.type == tokenize.STRING and token.string.startswith(('"""', 'r"""')):  # a docstring: its text
            for offset, text in enumerate(token.string.splitlines()):
                rows[token.start[0] + offset].append("S:" + text.strip())
            continue
        rows[token.start[0]].append(token_shape(token))
    shapes = []
    for number in sorted(rows):
        parts = rows[number]
        if parts[0] in ("import", "from") and "import" in parts:
            continue
        shape = " ".join(parts)
        docstring = any(part.startswith("S:") and len(part) > 4 for part in parts)
        if not docstring and (ITEM.fullmatch(shape) or sum(part not in PUNCTUATION for part in parts) < 2):
            continue
        shapes.append((number, shape))
    return shapes


def duplicate_pairs(root: Path) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """Pairs of files sharing runs of :data:`RUN` same-shape lines, with the first line of each shared run."""
    places: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for path in sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts):
        shapes = line_shapes(path.read_text())
        name = path.relative_to(root).as_posix()
        for i in range(len(shapes) - RUN + 1):
            run = tuple(shape for _, shape in shapes[i : i + RUN])
            if len(set(run)) > 1:
                places[run].append((name, shapes[i][0]))
    pairs: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for where in places.values():
        if not 2 <= len(where) <= TOO_COMMON:
            continue
        for a, (file_a, line_a) in enumerate(where):
            for file_b, line_b in where[a + 1 :]:
                if file_a == file_b and abs(line_a - line_b) < RUN:
                    continue
                pairs[(file_a, file_b)].append((line_a, line_b))
    return dict(pairs)


def describe(pairs: dict[tuple[str, str], list[tuple[int, int]]]) -> str:
    return "\n".join(
        f"{a}:{runs[0][0]} ~ {b}:{runs[0][1]} ({len(runs)} shared runs)" for (a, b), runs in sorted(pairs.items())
    )


def test_the_scan_finds_a_renamed_copy_and_ignores_thin_lines(tmp_path):
    body = "def {f}(values, limit):\n    total = 0\n    for value in values:\n        if value > limit:\n"
    body += "            total += value * 2\n        else:\n            total -= {k}\n    return total / len(values)\n"
    (tmp_path / "a.py").write_text(body.format(f="spread", k=1))
    (tmp_path / "b.py").write_text(body.format(f="margin", k=7).replace("values", "items"))
    (tmp_path / "c.py").write_text("NAMES = [\n" + "".join(f'    "n{i}",\n' for i in range(20)) + "]\n")
    (tmp_path / "d.py").write_text("WORDS = [\n" + "".join(f'    "w{i}",\n' for i in range(20)) + "]\n")
    assert list(duplicate_pairs(tmp_path)) == [("a.py", "b.py")]


def test_the_package_repeats_itself_at_most_twice():
    pairs = duplicate_pairs(PACKAGE)
    assert len(pairs) <= MAX_PAIRS, f"{len(pairs)} pairs of places share {RUN}+ same-shape lines:\n{describe(pairs)}"


# ---- logic that exists once --------------------------------------------------------------------------------------
ONCE = {  # what: (pattern of its tell-tale code, without strings, comments and spaces; the one module allowed it)
    "atomic writing": (r"os\.replace\(", "files.py"),
    "the (group, class) cell index": (
        r"\bg\w*(\.\w+\([^)]*\))*\*(self\.num_classes|num_classes|k|K|\(int\(\w+\.max\(\)\)\+1\))\+",
        "data/labels.py",
    ),
    "batch unpacking": (r"\w+,\w+,\*\w+=batch\b|len\(batch\)not in\(2,3\)", "batches.py"),
    "the stratified split": (r"round\(fraction\*\w+", "data/split.py"),
    "the prior weights": (r"\b(\w*counts?)/\1\.sum\(\)|\b1(\.0)?/\w*priors?\b", "losses/priors.py"),
}


def code_only(source: str) -> str:
    """``source`` without strings (docstrings too), comments and spaces (but between words); a line per statement."""
    lines: list[str] = []
    current = ""
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.NEWLINE, tokenize.NL) and current:
            lines.append(current)
            current = ""
        elif token.type not in SKIP and token.type != tokenize.STRING and token.type not in FSTRING_PARTS:
            words = current[-1:].isalnum() or current[-1:] == "_"
            current += (" " if words and (token.string[0].isalnum() or token.string[0] == "_") else "") + token.string
    return "\n".join(lines)


def test_logic_that_must_exist_once_is_written_once():
    found: dict[str, set[str]] = defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        source = code_only(path.read_text())
        for what, (pattern, _) in ONCE.items():
            if re.search(pattern, source):
                found[what].add(path.relative_to(PACKAGE).as_posix())
    assert {what: sorted(where) for what, where in found.items()} == {what: [home] for what, (_, home) in ONCE.items()}
