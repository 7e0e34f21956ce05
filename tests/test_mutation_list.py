"""The planted-bug list of ``benchmarks/mutation_check.py`` still applies to the code it plants bugs in.

A mutation whose snippet no longer occurs exactly once is skipped as ``SNIPPET MISSING`` at run time, so a
refactor could silently retire it; this reads the list without running any mutation (a second or so).
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "mutation_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("mutation_check_for_tests", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_every_planted_bug_still_has_its_snippet_exactly_once_and_a_unique_name() -> None:
    mc = _module()
    problems = {m.name: mc.snippet_problem(m) for m in mc.MUTATIONS if mc.snippet_problem(m)}
    assert not problems, f"mutations that no longer apply (update their snippets): {problems}"
    names = [m.name for m in mc.MUTATIONS]
    assert len(names) == len(set(names))
    assert all(m.old != m.new for m in mc.MUTATIONS)
    planted = [(m.file, m.old, m.new) for m in mc.MUTATIONS]  # two names for one bug would count it twice
    twice = [m.name for m in mc.MUTATIONS if planted.count((m.file, m.old, m.new)) > 1]
    assert not twice, f"mutations planting the same bug: {twice}"


def test_every_planted_bug_names_tests_that_exist() -> None:
    mc = _module()
    root = Path(__file__).resolve().parents[1]
    missing = {}
    for m in mc.MUTATIONS:
        for node in m.tests:
            file, _, name = node.partition("::")
            path = root / file
            if not path.is_file() or (name and f"def {name.split('[')[0]}(" not in path.read_text()):
                missing[m.name] = node
    assert not missing, f"mutations naming tests that do not exist: {missing}"
