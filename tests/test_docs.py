"""The documentation: the site builds strictly and offline, and every `lsr-os ...` command line in
the README and the docs names commands and options that the click app has."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import pytest

from lsr_os.cli import main

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


# --------------------------------------------------------------------------- the strict build


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """`mkdocs build --strict` into a temporary folder, with every proxy pointing at a closed port,
    so a build step that tried to download anything (fonts, a CDN, inventories) would fail."""
    out = tmp_path_factory.mktemp("site")
    closed = "http://127.0.0.1:9"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "HTTP_PROXY": closed, "HTTPS_PROXY": closed,
           "http_proxy": closed, "https_proxy": closed, "NO_PROXY": "", "no_proxy": ""}
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                          str(ROOT / "mkdocs.yml"), "--site-dir", str(out)],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert run.returncode == 0, f"strict docs build failed:\n{run.stdout}\n{run.stderr}"
    assert "WARNING" not in run.stderr, run.stderr
    return out


def test_every_page_is_built(site):
    pages = {p.stem for p in (ROOT / "docs").glob("*.md")}
    built = {p.parent.name if p.parent != site else "index" for p in site.rglob("index.html")}
    assert pages <= built, f"pages not built: {sorted(pages - built)}"


def test_the_built_site_loads_nothing_from_elsewhere(site):
    """Stylesheets, scripts, fonts and images all come from the site itself."""
    remote = re.compile(r"""<(?:link|script|img)\b[^>]*\b(?:href|src)=["']?(?:https?:)?//""", re.I)
    offenders = {str(p.relative_to(site)): remote.findall(p.read_text(encoding="utf-8"))
                 for p in site.rglob("*.html")}
    assert not {k: v for k, v in offenders.items() if v}
    css = "".join(p.read_text(encoding="utf-8") for p in site.rglob("*.css"))
    assert "fonts.googleapis" not in css and "@import url(http" not in css


def test_the_cli_reference_is_generated_under_the_prog_name_lsr_os(site):
    html = (site / "cli" / "index.html").read_text(encoding="utf-8")
    for name, command in walk(main, "lsr-os"):
        if not command.hidden:
            assert f"{name} [OPTIONS]" in html, f"{name} is missing from the CLI reference"
    assert "Usage:" in html and not re.search(r"\b(?:main|cli) \[OPTIONS\]", html)


def test_the_api_reference_documents_the_public_names(site):
    import lsr_os

    html = (site / "api" / "index.html").read_text(encoding="utf-8")
    missing = [n for n in lsr_os.__all__ if n != "__version__" and not re.search(rf'id="[\w.]*\.{n}"', html)]
    assert not missing, f"public names without an API reference entry: {missing}"


def test_no_page_points_into_the_engineers_notes():
    for path in SOURCES:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(?<![\w/-])(?:\.\./)?shared/|METHOD\.md|DESIGN\.md", text), path


# --------------------------------------------------------------------------- command lines


@dataclass(frozen=True)
class CommandLine:
    where: str  # file:line
    text: str


INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
START = re.compile(r"(?:^|(?<=[\s$(;&|]))lsr-os(?=\s|$)")
OPERATORS = {"&&", "||", ";", "|", "&"}
PLACEHOLDER = re.compile(r"^(?:\.\.\.|[A-Z][A-Z0-9_]*)$")  # `...`, `COMMAND`, `FILE`


def command_lines(path: Path) -> list[CommandLine]:
    """The `lsr-os ...` command lines of a Markdown file: in fenced code blocks (continuation
    lines joined; shell prompts and output lines included) and in inline code spans."""
    found: list[CommandLine] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    fence = None
    pending = ""
    for lineno, line in enumerate(lines, 1):
        stripped = line.strip()
        if fence is None and stripped.startswith(("```", "~~~")):
            fence = stripped[:3]
            continue
        if fence is not None:
            if stripped.startswith(fence):
                fence = None
                continue
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text, pending = _without_comment(pending + stripped), ""
            found += [CommandLine(f"{path.name}:{lineno}", text[m.start():]) for m in START.finditer(text)]
            continue
        for span in INLINE.findall(line):
            if START.match(span.strip()):
                found.append(CommandLine(f"{path.name}:{lineno}", span.strip()))
    return found


def _without_comment(text: str) -> str:
    """The text before a shell comment (a `#` after whitespace, outside quotes)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i]
    return text


def tokens(line: CommandLine) -> list[str]:
    """The words of the one command that starts the line, up to the next shell operator."""
    lexer = shlex.shlex(_without_comment(line.text), posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    try:
        words = list(lexer)
    except ValueError as exc:
        raise AssertionError(f"{line.where}: cannot split {line.text!r}: {exc}") from None
    for i, word in enumerate(words):
        if word in OPERATORS:
            return words[:i]
    return words


def walk(command: click.Command, name: str):
    """(full name, command) for the command and everything under it."""
    yield name, command
    if isinstance(command, click.Group):
        for sub_name, sub in command.commands.items():
            yield from walk(sub, f"{name} {sub_name}")


def _options(command: click.Command) -> dict[str, click.Option]:
    names = {"-h": None, "--help": None}  # the app's help_option_names
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(dict.fromkeys([*param.opts, *param.secondary_opts], param))
    return names


def problems(words: list[str]) -> list[str]:
    """What is wrong with one `lsr-os` command's words: unknown commands, unknown options, more
    arguments than the command takes. Placeholders (`...`, `FILE`) are not checked."""
    assert words and words[0] == "lsr-os", words
    command, name, positionals, found = main, "lsr-os", 0, []
    i = 1
    while i < len(words):
        word = words[i].strip("[]")
        i += 1
        if PLACEHOLDER.match(word):
            if isinstance(command, click.Group):
                break  # `lsr-os COMMAND --help`: nothing more to check
            continue
        if word.startswith("-") and len(word) > 1 and not re.match(r"^-\d", word):
            flag, eq, _ = word.partition("=")
            options = _options(command)
            if flag in options:
                option = options[flag]
                takes_value = option is not None and not (option.is_flag or option.count)
                if takes_value and not eq:
                    i += 1
            elif re.match(r"^-[A-Za-z]{2,}$", flag) and all(f"-{c}" in options for c in flag[1:]):
                pass  # -vv
            else:
                found.append(f"{name} has no option {flag}")
            continue
        if isinstance(command, click.Group):
            sub = command.commands.get(word)
            if sub is None:
                found.append(f"{name} has no command {word!r}")
                break
            command, name = sub, f"{name} {word}"
            continue
        positionals += 1
    arguments = [p for p in command.params if isinstance(p, click.Argument)]
    if not any(a.nargs == -1 for a in arguments) and positionals > sum(a.nargs for a in arguments):
        found.append(f"{name} takes {sum(a.nargs for a in arguments)} argument(s), got {positionals}")
    return found


ALL_LINES = [line for path in SOURCES for line in command_lines(path)]


def test_the_docs_have_command_lines_to_check():
    """The collector finds code blocks, continuation lines, chained commands and inline spans."""
    texts = {line.text for line in ALL_LINES}
    assert len(ALL_LINES) > 100
    assert "lsr-os node stop --port 9250" in texts  # after `;` in the README's test command
    assert any(t.startswith("lsr-os encode --model Salesforce/blip-itm-base-coco --data") and "--out" in t
               for t in texts)  # joined across a `\`
    assert "lsr-os collections delete lsr-images --yes" in texts


@pytest.mark.parametrize("line", ALL_LINES, ids=lambda line: line.where)
def test_every_command_line_names_real_commands_and_options(line):
    assert not problems(tokens(line)), f"{line.where}: {line.text}"


@pytest.mark.parametrize("text, problem", [
    ("lsr-os serch foo", "lsr-os has no command 'serch'"),
    ("lsr-os search --dense x", "lsr-os search has no option --dense"),
    ("lsr-os node begin --port 9200", "lsr-os node has no command 'begin'"),
    ("lsr-os -x info", "lsr-os has no option -x"),
    ("lsr-os collections list extra", "lsr-os collections list takes 0 argument(s), got 1"),
])
def test_the_check_finds_what_is_wrong(text, problem):
    assert problems(tokens(CommandLine("t", text))) == [problem]


@pytest.mark.parametrize("text", [
    "lsr-os -vv info --url http://a --json",
    "lsr-os search \"a dog\" --model ... --head ... [--no-expansion]",
    "lsr-os COMMAND --help",
    "lsr-os node start --port=9250 --heap 512m",
    "OPENSEARCH_PASSWORD=x lsr-os info --insecure  # it's a comment",
])
def test_the_check_accepts_what_is_right(text):
    line = CommandLine("t", text[text.index("lsr-os"):])
    assert problems(tokens(line)) == []
