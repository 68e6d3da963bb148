"""The public surface: ``asynccp.__all__``, where each name says it lives, the layout rules.

Changing a public name is a deliberate act: this list changes with it.
"""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import asynccp
import asynccp.errors

PUBLIC = [
    "Autosave",
    "AutosaveError",
    "AutosaveStats",
    "ServiceState",
    "Lifespan",
    "autosave",
    "lifespan",
    "DEFAULT_GRACE",
    "PREEMPTED_EXIT_CODE",
    "Backoff",
    "BackoffSpec",
    "Checkpoint",
    "CheckpointClosedError",
    "CheckpointError",
    "CheckpointNotFoundError",
    "Checkpointer",
    "CheckpointerOptions",
    "Limits",
    "Retention",
    "Sharding",
    "StoreOptions",
    "CommitUnknownError",
    "CorruptCheckpointError",
    "CorruptCheckpointWarning",
    "DestinationExistsError",
    "FileInfo",
    "FlushTimeoutError",
    "InvalidNameError",
    "LocationLike",
    "OnRetry",
    "Payload",
    "Policy",
    "Preempted",
    "Recoverable",
    "RecoverableError",
    "RetriesExhausted",
    "RetryEvent",
    "SaveHandle",
    "Shard",
    "ShardConflictError",
    "ShardMismatchError",
    "State",
    "Stats",
    "StepAlreadyCommittedError",
    "StepOrderError",
    "StoreError",
    "SupersededError",
    "UploadError",
    "checkpointed",
    "current",
    "supervise",
    "sync",  # a module: asynccp.sync, the checkpointer for synchronous code
]
PACKAGE = Path(asynccp.__file__).parent


def test_all_lists_the_public_names() -> None:
    assert sorted(asynccp.__all__) == sorted(PUBLIC)
    assert len(set(asynccp.__all__)) == len(asynccp.__all__)
    for name in asynccp.__all__:
        assert hasattr(asynccp, name), name
    exported = {
        n for n, v in vars(asynccp).items() if not n.startswith("_") and not inspect.ismodule(v)
    }
    # the package namespace holds the public names and modules, nothing else
    assert exported == set(PUBLIC) - {"sync"}
    assert inspect.ismodule(asynccp.sync)


def test_public_classes_and_functions_say_they_are_asynccps() -> None:
    for name in asynccp.__all__:
        obj = getattr(asynccp, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__ == "asynccp", (name, obj.__module__)
    assert repr(asynccp.Preempted) == "<class 'asynccp.Preempted'>"
    assert repr(asynccp.Checkpointer).endswith("'asynccp.Checkpointer'>")


def test_every_exception_is_defined_in_errors() -> None:
    """errors.py holds every exception class of the library (public or internal).

    (The command line, ``asynccp.cli``, is a client of the library with exceptions of
    its own for its exit codes.)
    """
    import asynccp._checkpointer
    import asynccp._supervise

    modules = [
        m
        for name, m in sorted(sys.modules.items())
        if name.startswith("asynccp.") and not name.startswith("asynccp.cli")
    ]
    assert len(modules) > 20
    for module in modules:
        for obj in vars(module).values():
            if inspect.isclass(obj) and issubclass(obj, BaseException):
                if obj.__module__.split(".")[0] != "asynccp":
                    continue  # a built-in or third-party exception the module uses
                assert getattr(asynccp.errors, obj.__name__, None) is obj, (module, obj)
    for name in ("Preempted", "NotAwaitableError", "ObjectExists"):
        assert name in asynccp.errors.__all__


def _string_literals(path: Path) -> list[tuple[int, str]]:
    """The string constants of a module's code (docstrings and bare strings left out)."""
    tree = ast.parse(path.read_text())
    prose = {
        id(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
    }
    return [
        (node.lineno, node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose
    ]


def test_the_storage_layout_is_named_in_one_module() -> None:
    """Keys of the layout are spelt out in ``_layout.py`` only (messages may name them)."""
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_layout.py":
            continue
        for lineno, text in _string_literals(path):
            if text.startswith(
                ("manifests/", "data/", "quarantine/", "writers/", "parts/", ".asynccp-tmp")
            ):
                offenders.append(f"{path.relative_to(PACKAGE)}:{lineno}: {text!r}")
    assert offenders == []


def test_the_errors_tree_names_every_exception() -> None:
    """errors.py draws its hierarchy in its docstring: every class defined there is in it."""
    tree = asynccp.errors.__doc__ or ""
    source = Path(asynccp.errors.__file__).read_text()
    classes = [n.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ClassDef)]
    assert len(classes) > 15
    missing = [name for name in classes if f"── {name}" not in tree]
    assert not missing, f"errors.py's tree does not show {missing}"
