"""What the package's source files import."""

import ast


def imported_modules(source):
    """The module names ``source`` imports (``import a.b`` gives ``a.b``; ``from a import b`` gives ``a``)."""
    tree = ast.parse(source)
    names = [a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names]
    names += [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    return names
