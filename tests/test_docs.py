"""The docs tell the truth: every repository path they name exists, every `rollback ...` command
they show parses with the options it shows, the pytest forms they show work, and the
communication files the operational guide names are the ones a run writes.

Read with markdown-it (what rich renders Markdown with): fenced and indented code blocks,
inline code and link targets. The checkers are plain functions, each also fed a deliberately
wrong snippet, so a checker that could never fail would show here.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from markdown_it import MarkdownIt

from rollback.cli import cli
from rollback.runs.comms import documents_for

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]

#: what the toolkit writes while it runs: named in the docs, absent from a clean checkout
OUTPUT_DIRS = {"logs", "reports", ".sandbox", ".sandbox-demo", ".venv", "mutants"}
#: placeholders the docs use for a value the reader fills in, and a value of the right kind
PLACEHOLDERS = {
    "PHASE": "fase2", "RUN_ID": "20260122T101500Z-fase2", "SHA": "3f2c1e9", "VERSION": "3f2c1e9",
    "DIR": "/tmp/rollback-docs", "PATH": "/tmp/rollback-docs/run-context.json", "N": "2",
    "URL": "http://127.0.0.1:9091", "DURATION": "1h", "MS": "300", "RATE": "0.05", "PORT": "9109",
}
#: where a shell command ends
COMMAND_END = re.compile(r"\s#|&&|\|\||[;|)>`]|\"|$")
#: `rollback SUBCOMMAND` at the start of a shell command, optionally by a path (.venv/bin/rollback)
COMMAND_START = re.compile(r"(?:^|(?<=[\s;&|(\"'=]))(?:[\w.~-]*/)*rollback\s+(?=[a-z-])")
SHELL_LANGS = {"", "bash", "sh", "shell", "console"}
#: paths of the platform's own repository that the docs quote (the original guide's files)
ELSEWHERE = {"docs/rollback/communication-templates.md"}


@dataclass(frozen=True)
class Snippet:
    """A piece of a document worth checking: code (a block or inline) or a link target."""

    doc: str
    line: int
    kind: str  # "block", "inline", "link"
    text: str
    lang: str = ""


def snippets(text: str, doc: str = "snippet.md") -> Iterator[Snippet]:
    for token in MarkdownIt("commonmark").enable("table").parse(text):
        line = (token.map[0] + 1) if token.map else 0
        if token.type in ("fence", "code_block"):
            yield Snippet(doc, line, "block", token.content, token.info.strip().split(" ")[0])
        for child in token.children or ():
            if child.type == "code_inline":
                yield Snippet(doc, line, "inline", child.content)
            elif child.type == "link_open":
                yield Snippet(doc, line, "link", str(child.attrs.get("href", "")))


def doc_snippets() -> list[Snippet]:
    return [s for path in DOCS for s in snippets(path.read_text(encoding="utf-8"),
                                                 str(path.relative_to(ROOT)))]


# --- paths -------------------------------------------------------------------------------------


def _tracked_top_level() -> set[str]:
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    return {name.split("/")[0] for name in files} - OUTPUT_DIRS


PATH_TOKEN = re.compile(r"[\w.*<>{}\[\]-]+(?:/[\w.*<>{}\[\],|-]*)*")


def named_paths(snippet: Snippet, top: set[str]) -> Iterator[str]:
    """Repository paths a code snippet names: tokens whose first part is one of the checkout's
    top-level names (checks/..., rollback/..., .github/workflows/..., README.md)."""
    if snippet.kind == "link":
        return
    for match in PATH_TOKEN.finditer(snippet.text):
        token = match.group(0).split("::")[0].rstrip(".,:;")
        first = token.split("/")[0]
        if first in top and ("/" in token or "." in first) and token not in ELSEWHERE:
            yield token


def missing(path: str, root: Path) -> bool:
    """Whether a named path is absent. Parts with a placeholder (<run>, YYYYMMDD, {a,b}) end the
    check; a glob must match something."""
    parts = []
    for part in path.rstrip("/").split("/"):
        if re.search(r"[<>{}\[\]]|YYYY|faseN|NNN", part):
            break
        parts.append(part)
    if not parts:
        return False
    pattern = "/".join(parts)
    if "*" in pattern:
        return not any(root.glob(pattern))
    return not (root / pattern).exists()


def wrong_links(snippet: Snippet, root: Path) -> Iterator[str]:
    """A relative link (not a URL, not an anchor) whose target is not there."""
    if snippet.kind != "link" or re.match(r"^(?:[a-z]+:|#)", snippet.text):
        return
    target = snippet.text.split("#")[0]
    base = (root / snippet.doc).parent
    if target and not (base / target).exists():
        yield target


def path_problems(items: list[Snippet], root: Path = ROOT) -> list[str]:
    top = _tracked_top_level()
    problems = []
    for s in items:
        for path in named_paths(s, top):
            if missing(path, root):
                problems.append(f"{s.doc}:{s.line}: names {path}, which is not in the repository")
        for target in wrong_links(s, root):
            problems.append(f"{s.doc}:{s.line}: links to {target}, which is not in the repository")
    return problems


def test_every_path_the_docs_name_exists() -> None:
    assert path_problems(doc_snippets()) == []


def test_the_path_check_catches_a_wrong_path_and_a_wrong_link() -> None:
    wrong = """\
The checks live in `checks/test_api.py`; the plugin is `checks/_plugin/reportz.py`.

```bash
python bench/nosuch.py --quick
```

See [the guide](docs/OPERATIONZ.md), [a section](#layout) and [elsewhere](https://example.com/x).
"""
    problems = path_problems(list(snippets(wrong, "README.md")))
    assert problems == [
        "README.md:1: names checks/_plugin/reportz.py, which is not in the repository",
        "README.md:3: names bench/nosuch.py, which is not in the repository",
        "README.md:7: links to docs/OPERATIONZ.md, which is not in the repository",
    ]


def test_output_paths_and_placeholders_are_not_taken_for_repository_paths() -> None:
    fine = ("`reports/<run>/communication/`, `logs/health-check-YYYYMMDD.log`, `.sandbox/api.log`, "
            "`tests/test_reliability_*.py`, `rollback/profiles/`, `examples/`")
    assert path_problems(list(snippets(fine))) == []


# --- rollback commands -------------------------------------------------------------------------


def commands(snippet: Snippet) -> Iterator[list[str]]:
    """The `rollback ...` commands a snippet shows, as argv after `rollback`, placeholders filled."""
    if snippet.kind == "link" or (snippet.kind == "block" and snippet.lang not in SHELL_LANGS):
        return
    if snippet.kind == "inline" and not snippet.text.startswith("rollback "):
        return
    text = re.sub(r"\\\n\s*", " ", snippet.text)
    for line in text.splitlines():
        line = without_comment(line)
        for start in COMMAND_START.finditer(line):
            rest = line[start.end():]
            command = rest[:COMMAND_END.search(rest).start()]  # type: ignore[union-attr]
            argv = shlex.split(command)
            yield [PLACEHOLDERS.get(arg, arg) for arg in argv]


def without_comment(line: str) -> str:
    """The line before its shell comment (a # outside quotes, at the start or after a blank)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def parse_problem(argv: list[str], complete: bool = True) -> str | None:
    """Why `rollback ARGV` would be refused by its parser, or None. Parses only: nothing runs.

    complete: the command as it would be typed (a block), so a bad value or a missing argument
    counts; otherwise (inline code naming a command in prose) only unknown commands and options.
    """
    command: click.Command = cli
    path, rest = ["rollback"], list(argv)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.commands.get(name)
        if sub is None:
            return f"{' '.join(path)}: no command {name!r}"
        command, path = sub, [*path, name]
    if complete:
        try:
            with command.make_context(" ".join(path), rest):
                pass
        except click.exceptions.Exit:
            pass
        except click.ClickException as exc:
            return f"{' '.join(path)}: {exc.format_message()}"
    result = CliRunner().invoke(cli, [*argv, "--help"])
    if result.exit_code != 0:
        return f"{' '.join(path)} ... --help exits {result.exit_code}: {result.output.strip()}"
    return None


def command_problems(items: list[Snippet]) -> list[str]:
    problems = []
    for s in items:
        for argv in commands(s):
            why = parse_problem(argv, complete=s.kind == "block")
            if why:
                problems.append(f"{s.doc}:{s.line}: `rollback {shlex.join(argv)}`: {why}")
    return problems


def test_the_docs_show_commands() -> None:
    shown = [argv for s in doc_snippets() for argv in commands(s)]
    assert len(shown) > 40
    assert ["health", "--continuous", "--max-cycles", "1", "--pushgateway",
            "http://pushgateway:9091"] in shown


def test_every_rollback_command_the_docs_show_parses() -> None:
    assert command_problems(doc_snippets()) == []


def test_the_command_check_catches_an_unknown_option_a_bad_value_and_a_missing_command() -> None:
    wrong = """\
```bash
rollback health --continuous --every 30          # an option that does not exist
eval "$(rollback sandbox env --dir .sandbox)" && rollback run fase9 --yes
/srv/rollback/.venv/bin/rollback healthcheck
```

Then `rollback validate PHASE --gate`, `rollback restore` (named in prose), and
`rollback history --limit 3`.
"""
    problems = command_problems(list(snippets(wrong)))
    assert [p.split(": ", 1)[0] for p in problems] == ["snippet.md:1"] * 3 + ["snippet.md:7"]
    text = "\n".join(problems)
    assert "No such option '--every'" in text
    assert "'fase9' is not one of" in text
    assert "no command 'healthcheck'" in text
    assert "No such option '--limit'" in text
    assert "validate" not in text  # PHASE is a placeholder, filled with a phase
    assert "restore" not in text  # inline code may name a command without its arguments


# --- the pytest forms the README shows --------------------------------------------------------


def pytest_collect(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest", *args, "--collect-only", "-p", "no:randomly"],
                          cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def context_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run context file outside the checkout, at an absolute path, as a driver writes it."""
    from checks.run_context import RunContext

    path = tmp_path_factory.mktemp("elsewhere") / "run-context.json"
    RunContext(run_id="20260122T101500Z-fase2", phase="fase2").write(path)
    return path


def test_run_context_with_an_absolute_path_in_the_documented_form(context_file: Path) -> None:
    """`--run-context=PATH`: pytest roots itself at the checkout and the checks read the file."""
    done = pytest_collect("-m", "fase2", f"--run-context={context_file}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"rootdir: {ROOT}" in done.stdout
    assert "run context: 20260122T101500Z-fase2 (fase2)" in done.stdout


def test_run_context_with_a_space_works_once_the_checks_are_named(context_file: Path) -> None:
    done = pytest_collect("checks", "-m", "fase2", "--run-context", str(context_file))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "run context: 20260122T101500Z-fase2 (fase2)" in done.stdout


def test_run_context_with_a_space_and_no_test_path_is_what_the_readme_warns_about(
    context_file: Path,
) -> None:
    """pytest reads a bare absolute path before it knows the option, as the place to root
    itself: the README says so and shows the forms above. If pytest ever stops doing this,
    this test fails and the README's warning can go."""
    done = pytest_collect("-m", "fase2", "--run-context", str(context_file))
    said = done.stdout + done.stderr
    assert done.returncode != 0
    # rooted away from the toolkit (at the path, or at what it shares with the checkout), so
    # the toolkit's conftest, which declares the option, is never read
    assert "unrecognized arguments: --run-context" in said, said
    assert f"rootdir: {ROOT}\n" not in said, said
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "--run-context=PATH" in readme


# --- the operational guide's communication files ------------------------------------------------


COMMUNICATION_NAME = re.compile(r"^(?:[\w<>*-]+/)?[\w<>*-]+\.(?:md|txt|json)$")


def communication_problems(items: list[Snippet]) -> list[str]:
    written = {name for phase in ("fase1", "fase2", "fase3") for name in documents_for(phase)}
    return [f"{s.doc}:{s.line}: names {s.text}, which no run writes (they are {', '.join(sorted(written))})"
            for s in items
            if s.kind == "inline" and COMMUNICATION_NAME.match(s.text) and s.text not in written
            and s.text.split("/")[0] not in OUTPUT_DIRS and not (ROOT / s.text).exists()]


def test_the_operational_guide_names_only_communication_files_a_run_writes() -> None:
    guide = ROOT / "docs" / "OPERATIONS.md"
    items = list(snippets(guide.read_text(encoding="utf-8"), "docs/OPERATIONS.md"))
    assert communication_problems(items) == []
    assert sum(1 for s in items if s.kind == "inline" and COMMUNICATION_NAME.match(s.text)) >= 5


def test_the_communication_check_catches_a_file_no_run_writes() -> None:
    wrong = ("- [ ] Status page updated: `status-page-*.md`; e-mail: `customer_email.txt`, "
             "`postmortem-draft.md`")
    problems = communication_problems(list(snippets(wrong)))
    assert [p.split(", which")[0] for p in problems] == ["snippet.md:1: names status-page-*.md",
                                                          "snippet.md:1: names postmortem-draft.md"]


def test_one_metrics_port_in_the_docs_and_the_metrics_address_documented() -> None:
    text = "\n".join(path.read_text(encoding="utf-8") for path in DOCS)
    ports = set(re.findall(r"--metrics-port\s+(\d+)", text))
    assert ports == {"9109"}
    for path in (ROOT / "README.md", ROOT / "docs" / "OPERATIONS.md"):
        assert "metrics_address" in path.read_text(encoding="utf-8"), path


def test_the_readme_says_how_rollback_gets_on_path() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert 'source .venv/bin/activate' in readme
