"""The docs hold together: every relative link resolves, and docs/cli.md documents exactly the commands there are.

The README is the front door and ``docs/`` the reference (plain Markdown, no site generator). A link to a
file that was renamed or removed, or an ``#anchor`` (it breaks silently when a heading is reworded), fails
here; so does a ``cvops <verb>`` in ``docs/cli.md`` that the dispatch table does not know, or a verb in the
table that ``docs/cli.md`` does not document.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator, List, Tuple

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

#: ``[text](target)`` and ``![alt](target)``; the target ends at whitespace or ``)`` (an optional "title" after it)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*([^)\s]+)(?:\s+\"[^\"]*\")?\s*\)")
#: a fenced code block (links inside it are text, not links)
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
#: ``cvops <verb>`` where the verb is a word (not ``recipe=...``, ``-m``, ``...``) and is not a key (``=``)
VERB = re.compile(r"(?<![\w./-])cvops\s+([a-z][a-z0-9-]*)(?![\w=.-])")


def pages() -> List[Path]:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def links(md: Path) -> Iterator[Tuple[int, str]]:
    """``(line, target)`` of every Markdown link in ``md`` outside code blocks."""
    text = md.read_text(encoding="utf-8")
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)  # keep line numbers
    for m in LINK.finditer(text):
        yield text.count("\n", 0, m.start()) + 1, m.group(1)


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I))  # https:, mailto:, ...


def test_docs_exist_and_the_readme_links_every_page():
    assert DOCS.is_dir() and list(DOCS.glob("*.md")), "docs/ holds the reference"
    linked = {(ROOT / t).resolve() for _, t in links(ROOT / "README.md") if not is_external(t)}
    missing = [p.name for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md's 'Where to go next' must link every docs page; not linked: {missing}"


def test_every_relative_link_resolves_to_a_file_without_an_anchor():
    bad = []
    for md in pages():
        for line, target in links(md):
            if is_external(target):
                continue
            where = f"{md.relative_to(ROOT)}:{line}: ({target})"
            if "#" in target:
                bad.append(f"{where} has an anchor; link the page (headings get reworded, anchors break silently)")
                continue
            path = (md.parent / target).resolve()
            if ROOT not in path.parents and path != ROOT:
                bad.append(f"{where} points outside the repository")
            elif not path.exists():
                bad.append(f"{where} does not exist")
    assert not bad, "\n".join(bad)


def test_the_link_finder_finds_links_and_skips_code(tmp_path):
    md = tmp_path / "x.md"
    md.write_text('see [a](a.md) and ![img](img/p.png "t")\n```\n[not](code.md)\n```\n[w](https://x.org/y#z)\n',
                  encoding="utf-8")
    assert list(links(md)) == [(1, "a.md"), (1, "img/p.png"), (5, "https://x.org/y#z")]
    assert is_external("https://x.org/y#z") and not is_external("docs/cli.md")


#: inline code: ``...``
SPAN = re.compile(r"`([^`\n]+)`")


def verbs(text: str) -> List[str]:
    """The verbs named as ``cvops <verb>`` in the code of a Markdown text (code blocks and code spans; prose
    such as "cvops composes" is not a command)."""
    code = [m.group(0) for m in FENCE.finditer(text)]
    code += SPAN.findall(FENCE.sub("", text))
    return sorted({v for c in code for v in VERB.findall(c)})


def cli_verbs() -> List[str]:
    return verbs((DOCS / "cli.md").read_text(encoding="utf-8"))


def test_the_verb_finder_takes_verbs_in_code_only():
    text = ("cvops composes it; `cvops serve recipe=x`; `cvops -m a=1`; `python -m cvops ...`; `cvops.cli`\n"
            "```bash\ncvops recipe=x\ncvops train-worker recipe=x\n```\n")
    assert verbs(text) == ["serve", "train-worker"]


def test_every_verb_in_docs_cli_is_a_command_and_every_command_is_documented():
    from cvops.cli import COMMANDS  # the dispatch table ``cvops <verb>`` goes through

    documented = cli_verbs()
    unknown = [v for v in documented if v not in COMMANDS]
    assert not unknown, f"docs/cli.md names `cvops <verb>` for verbs cvops does not have: {unknown} " \
                        f"(the commands: {sorted(COMMANDS)})"
    undocumented = sorted(set(COMMANDS) - set(documented))
    assert not undocumented, f"commands without a section in docs/cli.md: {undocumented}"
