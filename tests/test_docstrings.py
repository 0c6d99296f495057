"""Docstring style (MONAI's, as in ``monai/networks/nets/basic_unet.py``): Google-style ``Args:`` sections.

Checked statically (with ``ast``, nothing is imported) over every module of ``bundle/``:

- every public function and public method (name not starting with ``_``; ``__init__`` and the other dunders are
  not public) that takes parameters besides ``self``/``cls`` has an ``Args:`` section in its docstring that names
  each parameter (``*args``/``**kwargs`` by their names);
- every public class whose constructor takes parameters (an ``__init__`` defined in the class, or the fields of a
  ``@dataclass``) has an ``Args:`` section naming each of them, in the class docstring or in ``__init__``'s.

Functions nested in functions and the members of private classes are not public and are not checked. The failure
lists ``file:line name`` with what is missing.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bundle"

# a line that starts a Google-style section, e.g. "Returns:" (the text of the section is indented below it)
SECTION = re.compile(r"^(\s*)([A-Z][A-Za-z ]*):\s*$")


def args_section(docstring: str | None) -> str | None:
    """The text of a docstring's ``Args:`` section (also spelled ``Arguments:``/``Parameters:``).

    Args:
        docstring: the docstring, or None where there is none.

    Returns:
        The lines under the section header up to the next line indented as little as the header, joined by
        newlines; None when the docstring has no such section.
    """
    if not docstring:
        return None
    lines = docstring.expandtabs().splitlines()
    for i, line in enumerate(lines):
        match = SECTION.match(line)
        if not match or match.group(2) not in ("Args", "Arguments", "Parameters"):
            continue
        indent = len(match.group(1))
        body = []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        return "\n".join(body)
    return None


def parameter_names(function: ast.FunctionDef | ast.AsyncFunctionDef, is_method: bool) -> list[str]:
    """The names of a function's parameters, without the ``self``/``cls`` of a method.

    Args:
        function: the function's definition.
        is_method: whether it is defined directly in a class body (then a first parameter named ``self`` or
            ``cls`` is left out; a ``@staticmethod`` keeps all of its parameters).

    Returns:
        The positional-only, positional, ``*args``, keyword-only and ``**kwargs`` names, in that order.
    """
    arguments = function.args
    positional = [a.arg for a in arguments.posonlyargs + arguments.args]
    static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in function.decorator_list)
    if is_method and not static and positional and positional[0] in ("self", "cls"):
        positional = positional[1:]
    names = positional
    if arguments.vararg is not None:
        names.append(arguments.vararg.arg)
    names += [a.arg for a in arguments.kwonlyargs]
    if arguments.kwarg is not None:
        names.append(arguments.kwarg.arg)
    return names


def missing_names(docstrings: list[str | None], names: list[str]) -> list[str] | None:
    """Which parameter names the ``Args:`` sections of some docstrings do not mention.

    Args:
        docstrings: the docstrings to look in (the first ``Args:`` section of each counts; None for no docstring).
        names: the parameter names.

    Returns:
        None when none of the docstrings has an ``Args:`` section, else the names that none of the sections
        mentions as a whole word (an empty list when all are there).
    """
    sections = [s for s in (args_section(d) for d in docstrings) if s is not None]
    if not sections:
        return None
    text = "\n".join(sections)
    return [n for n in names if not re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", text)]


def is_dataclass(node: ast.ClassDef) -> bool:
    """Whether a class is decorated with ``@dataclass``/``@dataclasses.dataclass`` (with or without arguments).

    Args:
        node: the class definition.

    Returns:
        True for a dataclass.
    """
    for decorator in node.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        name = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
        if name == "dataclass":
            return True
    return False


def dataclass_fields(node: ast.ClassDef) -> list[str]:
    """The constructor parameters of a dataclass: its annotated class attributes that are not ``ClassVar``.

    Args:
        node: the class definition.

    Returns:
        The field names, in order.
    """
    fields = []
    for statement in node.body:
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            if "ClassVar" not in ast.unparse(statement.annotation):
                fields.append(statement.target.id)
    return fields


def check_function(path: str, function: ast.FunctionDef | ast.AsyncFunctionDef, owner: str, is_method: bool):
    """The problem with one public function's docstring, if any.

    Args:
        path: the module's path, relative to the repository, for the message.
        function: the function's definition.
        owner: the qualified name of the class it is defined in plus ``"."``, or ``""`` at module level.
        is_method: whether it is defined directly in a class body.

    Returns:
        A ``file:line name: ...`` message, or None when the docstring is complete (or the function takes no
        parameters).
    """
    names = parameter_names(function, is_method)
    if not names:
        return None
    missing = missing_names([ast.get_docstring(function)], names)
    where = f"{path}:{function.lineno} {owner}{function.name}"
    if missing is None:
        return f"{where}: no Args: section (parameters: {', '.join(names)})"
    if missing:
        return f"{where}: Args: does not name {', '.join(missing)}"
    return None


def check_class(path: str, node: ast.ClassDef, owner: str) -> list[str]:
    """The problems with a public class's constructor documentation and with its public methods' docstrings.

    Args:
        path: the module's path, relative to the repository, for the messages.
        node: the class definition.
        owner: the qualified name of the enclosing class plus ``"."``, or ``""`` at module level.

    Returns:
        One ``file:line name: ...`` message per problem (nested public classes included).
    """
    problems = []
    qualified = f"{owner}{node.name}"
    init = next(
        (s for s in node.body if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef)) and s.name == "__init__"), None
    )
    if init is not None:
        names = parameter_names(init, is_method=True)
        docstrings = [ast.get_docstring(node), ast.get_docstring(init)]
    elif is_dataclass(node):
        names = dataclass_fields(node)
        docstrings = [ast.get_docstring(node)]
    else:
        names = []
    if names:
        missing = missing_names(docstrings, names)
        where = f"{path}:{node.lineno} {qualified}"
        if missing is None:
            problems.append(f"{where}: no Args: section for the constructor (parameters: {', '.join(names)})")
        elif missing:
            problems.append(f"{where}: constructor Args: does not name {', '.join(missing)}")
    for statement in node.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and not statement.name.startswith("_"):
            problem = check_function(path, statement, f"{qualified}.", is_method=True)
            if problem:
                problems.append(problem)
        elif isinstance(statement, ast.ClassDef) and not statement.name.startswith("_"):
            problems += check_class(path, statement, f"{qualified}.")
    return problems


def check_module(path: Path, root: Path = ROOT) -> list[str]:
    """The docstring problems of one module's public functions, classes and methods.

    Args:
        path: the module's file.
        root: the folder that the messages give the path relative to.

    Returns:
        One ``file:line name: ...`` message per problem.
    """
    relative = path.relative_to(root).as_posix()
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    problems = []
    for statement in tree.body:
        if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)) and not statement.name.startswith("_"):
            problem = check_function(relative, statement, "", is_method=False)
            if problem:
                problems.append(problem)
        elif isinstance(statement, ast.ClassDef) and not statement.name.startswith("_"):
            problems += check_class(relative, statement, "")
    return problems


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_checker_sees_the_package():
    """The check runs over the package's modules (a moved package would make it pass vacuously)."""
    assert len(MODULES) > 10


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_public_docstrings_name_their_parameters(path):
    """Every public function/method with parameters, and every public class's constructor, documents them."""
    problems = check_module(path)
    assert not problems, "docstrings without a complete Args: section:\n" + "\n".join(problems)


def test_checker_finds_gaps(tmp_path):
    """The checker reports a missing section, a missing name and an undocumented constructor, and accepts Args."""
    module = tmp_path / "bundle" / "sample.py"
    module.parent.mkdir()
    module.write_text('''
def complete(x, *args, scale=1, **kwargs):
    """Doc.

    Args:
        x: input ``[B, C, *S]``.
        args: more.
        scale: factor.
        kwargs: options.

    Returns:
        Something.
    """


def undocumented(x):
    """Doc."""


def partly(x, y):
    """Doc.

    Args:
        x: only this one; the other is named after the section.

    Returns:
        y.
    """


def _private(x):
    pass


class Net:
    """A class without constructor Args."""

    def __init__(self, channels):
        pass

    def forward(self, x):
        """Doc.

        Args:
            x: input.
        """

    @staticmethod
    def build(self):
        """Doc."""


class Documented:
    """Doc.

    Args:
        channels: the channels.
    """

    def __init__(self, channels):
        pass


class _Hidden:
    def method(self, x):
        pass
''')
    problems = check_module(module, root=tmp_path)
    assert len(problems) == 4, problems
    assert problems[0].startswith("bundle/sample.py:16 undocumented: no Args: section")
    assert problems[1].startswith("bundle/sample.py:20 partly: Args: does not name y")
    assert problems[2].startswith("bundle/sample.py:35 Net: no Args: section for the constructor")
    assert problems[3].startswith("bundle/sample.py:49 Net.build: no Args: section (parameters: self)")
