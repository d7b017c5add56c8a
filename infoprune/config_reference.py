"""The configuration reference, generated from ``conf/`` so that it cannot drift from it.

    python -m infoprune.config_reference            # rewrites docs/config_reference.md

Every config group (a folder of ``conf/``) with each of its options (a YAML file), the option's leading comment,
and its settings with their values and comments, as written in the file; then the entry points' own top-level
settings. ``tests/test_documented.py`` fails when the committed file differs from what this writes."""
from __future__ import annotations

from pathlib import Path

from infoprune.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
OUTPUT = ROOT / "docs" / "config_reference.md"
ENTRY_POINTS = ("train.yaml", "prune.yaml", "sensitivity.yaml")


def _leading_comment(lines: list[str]) -> str:
    text = []
    for line in lines:
        if not line.startswith("#"):
            break
        text.append(line.lstrip("#").strip())
    return " ".join(t for t in text if t and t != "@package _global_")


def _settings(lines: list[str]) -> list[str]:
    """The file's lines after its leading comment, as a YAML block (comments kept)."""
    body = lines[next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines)):]
    while body and not body[-1].strip():
        body.pop()
    return body


def _option(path: Path) -> list[str]:
    lines = path.read_text().splitlines()
    out = [f"#### `{path.stem}`", ""]
    comment = _leading_comment(lines)
    if comment:
        out += [comment, ""]
    body = _settings(lines)
    if body:
        out += ["```yaml", *body, "```", ""]
    return out


def generate() -> str:
    """The reference as Markdown."""
    out = ["# Configuration reference", "",
           "Generated from `conf/` by `python -m infoprune.config_reference`; do not edit by hand. Choose an option "
           "of a group with `group=option` (`pruning/metric=mi`), override any setting with `key=value` "
           "(`pruning.stats.bins=64`). The concepts behind the groups: [guide.md](guide.md).", ""]
    out += ["## Entry points", ""]
    for name in ENTRY_POINTS:
        out += [f"### `{name}`", "", "```yaml", *_settings((CONF / name).read_text().splitlines()), "```", ""]
    out += ["## Config groups", ""]
    groups = sorted({p.parent for p in CONF.rglob("*.yaml")} - {CONF})
    for group in groups:
        out += [f"### `{group.relative_to(CONF).as_posix()}`", ""]
        for option in sorted(group.glob("*.yaml")):
            out += _option(option)
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    atomic_write_text(OUTPUT, generate())
    print(f"wrote {OUTPUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
