"""The `lsr-os` command line: parse options, call the lsr_os library, print the results.

No logic lives here. Library errors (`LsrOsError`) become one line on stderr and the error's
exit code; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path

import click

from lsr_os import __version__
from lsr_os.config import ClusterConfig, split_urls
from lsr_os.errors import LsrOsError


class LsrGroup(click.Group):
    """A click group that turns library errors into one clear line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except LsrOsError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            click.secho(f"Error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=LsrGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="lsr-os")
@click.option("-v", "--verbose", count=True, help="More logging: -v info, -vv debug.")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
def main(verbose: int, debug: bool) -> None:
    """Multimodal learned sparse retrieval served from OpenSearch rank_features fields."""
    level = logging.DEBUG if verbose > 1 or debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("opensearch").setLevel(max(level, logging.WARNING))


def cluster_options(func):
    """Add the shared connection options; the command receives `cluster: ClusterConfig`."""

    @click.option("--url", "urls", multiple=True, envvar="OPENSEARCH_URL", show_envvar=True,
                  help="Cluster URL; repeat or comma-separate for several nodes. [default: http://localhost:9200]")
    @click.option("--user", envvar="OPENSEARCH_USER", show_envvar=True, help="Basic-auth user.")
    @click.option("--password", envvar="OPENSEARCH_PASSWORD", show_envvar=True,
                  help="Basic-auth password (prefer the environment variable).")
    @click.option("--ca-certs", type=click.Path(exists=True, dir_okay=False), envvar="OPENSEARCH_CA_CERTS",
                  help="CA bundle to verify the cluster's TLS certificate.")
    @click.option("--insecure", is_flag=True, help="Do not verify TLS certificates.")
    @click.option("--timeout", type=float, default=30.0, show_default=True, help="Request timeout in seconds.")
    @functools.wraps(func)
    def wrapper(*args, urls, user, password, ca_certs, insecure, timeout, **kwargs):
        cluster = ClusterConfig(urls=split_urls(urls), user=user, password=password,
                                ca_certs=ca_certs, insecure=insecure, timeout=timeout)
        return func(*args, cluster=cluster, **kwargs)

    return wrapper


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


# --------------------------------------------------------------------------- local node


@main.group()
def node() -> None:
    """Run a local OpenSearch node without Docker (from Maven Central artifacts)."""


@node.command("start")
@click.option("--version", "os_version", default=None, help="OpenSearch version [default: lsr_os.node.DEFAULT_VERSION].")
@click.option("--port", type=int, default=9200, show_default=True, help="HTTP port on 127.0.0.1.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder [default: under the node's state folder].")
@click.option("--heap", default="1g", show_default=True, help="JVM heap, e.g. 512m or 2g.")
@click.option("--wait", type=float, default=180.0, show_default=True, help="Seconds to wait for the node to be ready.")
def node_start(os_version: str | None, port: int, data: Path | None, heap: str, wait: float) -> None:
    """Provision (once, cached) and start a local node; harmless when it already runs."""
    from lsr_os import node as node_lib

    spec = node_lib.NodeSpec(version=os_version or node_lib.DEFAULT_VERSION, port=port, data=data, heap=heap)
    state = node_lib.start(spec, timeout=wait)
    verb = "already running" if state.already_running else "started"
    click.echo(f"OpenSearch {state.version} {verb} at {state.url} (pid {state.pid}, logs {state.log_file})")


@node.command("status")
@click.option("--port", type=int, default=9200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def node_status(port: int, as_json: bool) -> None:
    """Show whether the local node runs, its version and cluster health."""
    from lsr_os import node as node_lib

    status = node_lib.status(port)
    if as_json:
        echo_json(status)
    elif status["running"]:
        click.echo(f"running: OpenSearch {status['version']} at {status['url']} (pid {status['pid']}), "
                   f"cluster {status['cluster_name']} is {status['health']}")
    else:
        click.echo(f"not running on port {port}")
    if not status["running"]:
        sys.exit(1)


@node.command("stop")
@click.option("--port", type=int, default=9200, show_default=True)
def node_stop(port: int) -> None:
    """Stop the local node and wait until its process is gone."""
    from lsr_os import node as node_lib

    stopped = node_lib.stop(port)
    click.echo(f"stopped node (pid {stopped})" if stopped else f"no node was running on port {port}")


@node.command("logs")
@click.option("--port", type=int, default=9200, show_default=True)
@click.option("-n", "--lines", type=int, default=50, show_default=True)
def node_logs(port: int, lines: int) -> None:
    """Print the last lines of the local node's log."""
    from lsr_os import node as node_lib

    click.echo(node_lib.logs(port, lines))


if __name__ == "__main__":
    main()
