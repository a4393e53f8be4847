"""Real `aima worker` processes that also load the test analyzers (`aima.testing.analyzers`), for tests and
benchmarks of the job machinery.

``python -m aima.testing.workers [aima worker options]`` is `aima worker` with that module added to the built-in
plugins; `spawn_worker` starts one with a test's settings (all worker settings passed on, not only those
`Settings.child_environment` names).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from aima.plugins import AnalyzerRegistry, create_plugin_manager
from aima.settings import Settings

PLUGIN = "aima.testing.analyzers"


def test_analyzer_registry() -> AnalyzerRegistry:
    """The built-in analyzers and the test ones, as the workers `spawn_worker` starts have them."""
    from aima.testing import analyzers

    pm = create_plugin_manager(load_external=False)
    pm.register(analyzers, PLUGIN)
    return AnalyzerRegistry(pm)


def worker_environment(settings: Settings) -> dict[str, str]:
    """Every worker setting as an environment variable."""
    return {f"AIMA_WORKER__{key.upper()}": str(value) for key, value in settings.worker.model_dump().items()}


def spawn_worker(
    settings: Settings, log: Path, *, resources: Sequence[str] = ("cpu",), **extra_env: str
) -> subprocess.Popen[bytes]:
    """Start a worker process serving `resources`, with the test analyzers, its output going to `log`."""
    env = {
        **os.environ,
        **settings.child_environment(),
        **worker_environment(settings),
        "AIMA_LOAD_PLUGINS": "",
        **extra_env,
    }
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "aima.testing.workers", "--resources", ",".join(resources)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    from aima import cli, plugins

    if PLUGIN not in plugins.DEFAULT_PLUGINS:
        plugins.DEFAULT_PLUGINS = (*plugins.DEFAULT_PLUGINS, PLUGIN)
    cli.app(["worker", *(sys.argv[1:] if argv is None else argv)], prog_name="aima")


if __name__ == "__main__":
    main()
