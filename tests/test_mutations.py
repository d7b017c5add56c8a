"""The mutation list follows the code and the docs: every replaced text occurs once, every named test exists, and
docs/testing.md has one row per mutation."""
from __future__ import annotations

from tests.conftest import ROOT
from tests.mutations import MUTATIONS, check_sources


def test_every_mutation_replaces_text_found_once_and_names_tests_that_exist():
    check_sources()
    for mutation in MUTATIONS:
        assert mutation.old != mutation.new and mutation.tests
        for test in mutation.tests:
            path, _, function = test.partition("::")
            assert (ROOT / path).is_file(), test
            if function:
                assert f"def {function.split('[')[0]}(" in (ROOT / path).read_text(), test


def test_docs_list_one_row_per_mutation():
    text = (ROOT / "docs" / "testing.md").read_text()
    table = text[text.index("| behaviour broken | how | test that fails |"):].split("\n\n")[0]
    rows = [line for line in table.splitlines()[2:] if line.startswith("| ")]
    assert len(rows) == len(MUTATIONS)
