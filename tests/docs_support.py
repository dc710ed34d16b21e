"""Reading the operators' documents for tests/test_docs.py: shell commands (with continuations,
pipes and placeholders), Markdown sections, tables and code blocks, the example config's key lines,
config key paths against the pydantic models, the runbook's `grep` pipelines, and the strings the
tools' sources can write."""
from __future__ import annotations

import ast
import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from common.config import Config

REPO = Path(__file__).resolve().parents[1]
RUNBOOK = REPO / "docs" / "runbooks.md"
README = REPO / "README.md"
DEPLOY = REPO / "deploy" / "README.md"
EXAMPLE = REPO / "config.example.yaml"
LOG_PATH = "/var/log/archiver.log"
LOG_CALLS = {"debug", "info", "warning", "error", "exception", "critical"}
#: Sample values for the docs' <placeholders>; an unknown placeholder fails the test that reads it.
SAMPLES = {"archive_key": "production_db/public.audit_logs/year=2026/month=01/day=15/part-20260115-0123456789abcdef0123.parquet",
           "last_good_archive": "production_db/public.audit_logs/year=2026/month=01/day=15/part-20260115-0123456789abcdef0123.parquet",
           "estimated_size": "250", "last_good_date": "2026-01-01"}


# -- commands and Markdown ------------------------------------------------------------------------
def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """(first line number, line) with backslash continuations joined, as the shell reads them."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        start, line = i + 1, lines[i]
        while line.rstrip().endswith("\\") and i + 1 < len(lines):
            i += 1
            line = line.rstrip()[:-1] + " " + lines[i].strip()
        yield start, line
        i += 1


def shell_tokens(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    return list(lexer)


def substitute(text: str, where: str) -> str:
    """Placeholders to sample values; `$(date ...)` to the date a week ago."""
    text = re.sub(r'"?\$\([^)]*\)"?', (date.today() - timedelta(days=7)).isoformat(), text)

    def sample(m: re.Match[str]) -> str:
        assert m.group(1) in SAMPLES, f"{where}: no sample value for placeholder <{m.group(1)}>; add it to SAMPLES"
        return SAMPLES[m.group(1)]
    return re.sub(r"<([a-z_]+)>", sample, text)


@dataclass(frozen=True)
class Command:
    where: str
    tool: str
    args: tuple[str, ...]
    rest: str  # the shell text after the tool's words (pipes, redirections), as written


def split_at_operator(text: str) -> tuple[str, str]:
    """(the command's own words, the rest from the first unquoted pipe/redirection/`;`/`&`)."""
    quote = ""
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "|<>;&" or (ch.isdigit() and text[i + 1:i + 2] == ">" and text[i - 1:i] in (" ", "")):
            return text[:i], text[i:].strip()
    return text, ""


def extract_commands(text: str, source: str) -> list[Command]:
    found = []
    for lineno, line in logical_lines(text):
        for m in re.finditer(r"python -m (\w+)\.main\b", line):
            where = f"{source}:{lineno}"
            own, rest = split_at_operator(substitute(line[m.end():].split("`", 1)[0], where))
            found.append(Command(where, m.group(1), tuple(shlex.split(own, comments=True)), rest))
    return found


def fenced_blocks(text: str, lang: str) -> list[tuple[int, str]]:
    return [(text[:m.start()].count("\n") + 1, m.group(1))
            for m in re.finditer(rf"^ *```{lang}\n(.*?)^ *```", text, re.S | re.M)]


def outside_fences(text: str) -> Iterator[str]:
    """The lines of a Markdown text that are not inside ``` code blocks."""
    fenced = False
    for line in text.splitlines():
        if line.strip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            yield line


def headings(text: str) -> list[str]:
    return [m.group(2) for ln in outside_fences(text) if (m := re.match(r"^(#+) (.+)$", ln))]


def section(text: str, heading: str) -> str:
    """The body of a Markdown section, up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    fenced, level, body = False, 0, []
    for line in lines:
        if line.strip().startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"^(#+) (.+)$", line)
        if level and m and len(m.group(1)) <= level:
            break
        if level:
            body.append(line)
        elif m and m.group(2) == heading:
            level = len(m.group(1))
    assert level, f"no section {heading!r}"
    return "\n".join(body) + "\n"


def table_rows(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in text.splitlines() if ln.startswith("|")]
    return rows[2:]  # without the header and the |---| line


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


# -- config.example.yaml and the config models --------------------------------------------------
def uncommented_example() -> str:
    """The example with its commented-out sub-keys (`#  key: value`) switched on."""
    text = re.sub(r"^(\s*)#(  [a-z_]+:)", r"\1 \2", EXAMPLE.read_text(), flags=re.M)
    return re.sub(r"^( *)(\w+): null *\n(?=\1   +\w)", r"\1\2:\n", text, flags=re.M)


def example_keys(text: str) -> Iterator[tuple[tuple[str, ...], str, int]]:
    """(key path, comment, line number) of every key line; a list item shows up as `[]`."""
    stack: list[tuple[int, str]] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        m = re.match(r"^(\s*)(- )?([A-Za-z_][A-Za-z0-9_]*):(.*)$", line)
        if not m:
            continue
        indent = len(m.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        if m.group(2):
            stack.append((indent, "[]"))
            indent += 2
        path = tuple(name for _, name in stack) + (m.group(3),)
        yield path, m.group(4).split("#", 1)[1] if "#" in m.group(4) else "", lineno
        stack.append((indent, m.group(3)))


def model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = model_of(arg)
        if found is not None:
            return found
    return None


def field_for(path: tuple[str, ...]) -> tuple[type[BaseModel], str]:
    """The model and field name a config key path (`databases`, `[]`, `tables`, ...) names."""
    model: type[BaseModel] = Config
    for i, part in enumerate(path):
        if part == "[]":
            continue
        by_alias = {(f.alias or name): name for name, f in model.model_fields.items() if name != "source"}
        assert part in by_alias, f"{'.'.join(path)}: {part!r} is not a key of {model.__name__}"
        if i == len(path) - 1:
            return model, by_alias[part]
        inner = model_of(model.model_fields[by_alias[part]].annotation)
        assert inner is not None, f"{'.'.join(path)}: {part!r} has no sub-keys"
        model = inner
    raise AssertionError(f"{path}: not a key")


def all_key_paths(model: type[BaseModel] = Config, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, f in model.model_fields.items():
        if name == "source":
            continue
        path = prefix + (f.alias or name,)
        yield path
        inner = model_of(f.annotation)
        if inner is not None:
            is_list = "list" in str(f.annotation)
            yield from all_key_paths(inner, path + (("[]",) if is_list else ()))


# -- the runbook's greps and what the tools write ------------------------------------------------
@dataclass(frozen=True)
class Grep:
    where: str
    feed: str  # log | validate | metrics
    pattern: str
    ignore_case: bool
    extended: bool
    pipeline: str

    def regex(self) -> re.Pattern[str]:
        return re.compile(self.pattern if self.extended else bre_to_python(self.pattern), re.I if self.ignore_case else 0)

    def alternatives(self) -> list[re.Pattern[str]]:
        """Each word of an alternation on its own: every one must be real, not just one of them."""
        pat = self.regex().pattern
        if pat.startswith("(") and pat.endswith(")") and pat.count("(") == 1:
            pat = pat[1:-1]
        if re.search(r"(?<!\\)[()]", pat):  # nested groups: keep the whole expression
            return [self.regex()]
        return [re.compile(p, self.regex().flags) for p in re.split(r"(?<!\\)\|", pat)]


def feed_of(segments: list[list[str]], files: list[str], where: str) -> str:
    before = " ".join(" ".join(s) for s in segments)
    if LOG_PATH in files or LOG_PATH in before or "journalctl" in before:
        return "log"
    if "validate.main" in before:
        return "validate"
    if "/metrics" in before or any(f.endswith(".prom") for f in files):
        return "metrics"
    raise AssertionError(f"{where}: cannot tell what `grep` reads here; teach docs_support.feed_of")


def runbook_greps() -> list[Grep]:
    found = []
    for start, body in fenced_blocks(RUNBOOK.read_text(), "bash"):
        for lineno, line in logical_lines(body):
            if not re.search(r"(^|\|)\s*grep\b", line):
                continue
            where = f"docs/runbooks.md:{start + lineno}"
            tokens = shell_tokens(line)
            segments: list[list[str]] = [[]]
            for tok in tokens:
                segments.append([]) if tok == "|" else segments[-1].append(tok)
            for i, seg in enumerate(segments):
                if seg and seg[0] == "grep":
                    opts = [t for t in seg[1:] if t.startswith("-")]
                    words = [t for t in seg[1:] if not t.startswith("-")]
                    found.append(Grep(where, feed_of(segments[:i], words[1:], where), words[0],
                                      any("i" in o for o in opts), any("E" in o for o in opts), line.strip()))
    return found

def bre_to_python(pattern: str) -> str:
    """A grep basic regular expression as a Python one: `\\|`, `\\(`, ... are operators, bare
    `|`, `(`, `+`, ... are literal characters."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "|()+?{}":
            out.append(pattern[i + 1])
            i += 2
            continue
        out.append("\\" + ch if ch in "|()+?{}" else ch)
        i += 1
    return "".join(out)


def package_strings(*paths: str) -> list[str]:
    out = []
    for base in paths:
        files = [REPO / base] if base.endswith(".py") else sorted((REPO / base).rglob("*.py"))
        for f in files:
            for node in ast.walk(ast.parse(f.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    out.append(node.value)
                elif isinstance(node, ast.JoinedStr):  # an f-string, its values as <>
                    out.append("".join(str(v.value) if isinstance(v, ast.Constant) else "<>" for v in node.values))
    return out


def log_line_templates() -> list[str]:
    """Per logging call in the archiver's packages: its level name and every string in its arguments,
    which is what a text log line is made of."""
    out = []
    for f in [*sorted((REPO / "archiver").rglob("*.py")), *sorted((REPO / "common").glob("*.py"))]:
        # debug lines are not in the log at the default level: a word only they write does not count
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in LOG_CALLS - {"debug"}:
                level = "ERROR" if node.func.attr == "exception" else node.func.attr.upper()
                texts = [n.value for a in node.args for n in ast.walk(a) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
                out.append(f"{level} " + " ".join(texts))
    return out


SOURCES = {"log": log_line_templates, "validate": lambda: package_strings("validate"),
           "metrics": lambda: package_strings("archiver/ops/metrics.py")}
