"""Imports go one way: a module imports only from its own layer or below (README, Layout)."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (folder in the repository, package name, layer); lower layers never import higher ones
LAYERS = [("nnunet_ssl/utilities", "nnunet_ssl.utilities", 0), ("nnunet_ssl/components", "nnunet_ssl.components", 1),
          ("nnunet_ssl/data", "nnunet_ssl.data", 2), ("dataset_conversion", "nnunet_ssl.dataset_conversion", 2),
          ("architectures", "nnunet_ssl.architectures", 3), ("nnunet_ssl/core", "nnunet_ssl.core", 4),
          ("trainers", "nnunet_ssl.trainers", 5), ("nnunet_ssl/evaluation", "nnunet_ssl.evaluation", 6),
          ("nnunet_ssl/commands", "nnunet_ssl.commands", 7)]
TRAINERS_MAY_IMPORT = ("nnunet_ssl.core", "nnunet_ssl.components", "nnunet_ssl.architectures",
                       "nnunet_ssl.utilities", "nnunet_ssl.trainers")


def layer_of(module: str):
    for _, package, layer in LAYERS:
        if module == package or module.startswith(package + "."):
            return package, layer
    return None, None


def imported_modules(path: str):
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    for node in ast.walk(tree):  # function-level imports count too
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module


def sources():
    for folder, package, layer in LAYERS:
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for f in files:
                if f.endswith(".py"):
                    yield os.path.join(dirpath, f), package, layer


def test_every_module_belongs_to_a_layer():
    top = os.path.join(ROOT, "nnunet_ssl")
    loose = [f for f in os.listdir(top) if f.endswith(".py") and f not in ("__init__.py", "__main__.py")]
    assert not loose, f"modules outside a layer folder: {loose}"


@pytest.mark.parametrize("path,package,layer", list(sources()), ids=lambda v: os.path.relpath(v, ROOT)
                         if isinstance(v, str) and v.startswith(ROOT) else None)
def test_imports_go_downwards(path, package, layer):
    for module in imported_modules(path):
        if not module.startswith("nnunet_ssl"):
            continue
        target, target_layer = layer_of(module)
        assert target is not None, f"{path} imports {module}, which belongs to no layer"
        assert target_layer <= layer, f"{path} ({package}) imports {module} from a higher layer ({target})"
        if package == "nnunet_ssl.trainers":
            assert module.startswith(TRAINERS_MAY_IMPORT), f"{path}: trainers import the core and building blocks only"
