"""API emulators of the sandbox, one module per API; each registers its routes with
`collector.sandbox.core.route`. Add a module here and import it below."""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
