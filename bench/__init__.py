"""osteobench: a benchmark and ablation harness for osteoporosis screening from hand radiographs."""
from importlib.metadata import PackageNotFoundError, version as _version

from bench.errors import BenchError

try:
    __version__ = _version("osteobench")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

__all__ = ["BenchError", "__version__"]
