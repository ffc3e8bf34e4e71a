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
    # opensearch-py logs every failed request with a traceback; our errors already say what failed.
    logging.getLogger("opensearch").setLevel(logging.DEBUG if debug else logging.ERROR)


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


@main.command("info")
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(cluster: ClusterConfig, as_json: bool) -> None:
    """Check the connection: the cluster's version, health and nodes."""
    from lsr_os.config import cluster_info

    facts = cluster_info(cluster)
    if as_json:
        echo_json(facts)
    else:
        click.echo(f"OpenSearch {facts['version']} at {', '.join(cluster.urls)}: cluster {facts['cluster_name']} "
                   f"is {facts['status']} with {facts['number_of_nodes']} node(s)")


# --------------------------------------------------------------------------- local node


@main.group()
def node() -> None:
    """Run a local OpenSearch node without Docker (from Maven Central artifacts)."""


@node.command("start")
@click.option("--version", "os_version", default=None, help="OpenSearch version [default: lsr_os.node.DEFAULT_VERSION].")
@click.option("--port", type=int, default=9200, show_default=True,
              help="HTTP port of the first node on 127.0.0.1 (node i uses port+i; transport port+100+i).")
@click.option("--nodes", type=click.IntRange(1, 9), default=1, show_default=True, help="Number of nodes in the local cluster.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder [default: under the node's state folder].")
@click.option("--heap", default="1g", show_default=True, help="JVM heap of each node, e.g. 512m or 2g.")
@click.option("--wait", type=float, default=180.0, show_default=True, help="Seconds to wait for the cluster to be ready.")
def node_start(os_version: str | None, port: int, nodes: int, data: Path | None, heap: str, wait: float) -> None:
    """Provision (once, cached) and start a local node or cluster; harmless when it already runs."""
    from lsr_os import node as node_lib

    spec = node_lib.NodeSpec(version=os_version or node_lib.DEFAULT_VERSION, port=port, data=data,
                             heap=heap, nodes=nodes)
    for state in node_lib.start(spec, timeout=wait):
        verb = "already running" if state.already_running else "started"
        click.echo(f"{state.name}: OpenSearch {state.version} {verb} at {state.url} (pid {state.pid}, log {state.log_file})")


@node.command("status")
@click.option("--port", type=int, default=9200, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def node_status(port: int, as_json: bool) -> None:
    """Show whether the local node runs, its version and cluster health."""
    from lsr_os import node as node_lib

    status = node_lib.status(port)
    if as_json:
        echo_json(status)
    else:
        for n in status["nodes"]:
            state = f"running OpenSearch {n['version']}" if n["running"] else "stopped"
            click.echo(f"{n['name']}: {state} at {n['url']} (pid {n['pid']})")
        if status["running"]:
            click.echo(f"cluster {status['cluster_name']}: {status['health']}, {status['number_of_nodes']} node(s)")
        else:
            click.echo(f"no node running on port {port}")
    if not status["running"]:
        sys.exit(1)


@node.command("stop")
@click.option("--port", type=int, default=9200, show_default=True)
def node_stop(port: int) -> None:
    """Stop the local node(s) and wait until their processes are gone."""
    from lsr_os import node as node_lib

    stopped = node_lib.stop(port)
    click.echo(f"stopped {len(stopped)} node(s) (pids {', '.join(map(str, stopped))})" if stopped
               else f"no node was running on port {port}")


@node.command("logs")
@click.option("--port", type=int, default=9200, show_default=True)
@click.option("-n", "--lines", type=int, default=50, show_default=True)
def node_logs(port: int, lines: int) -> None:
    """Print the last lines of the local node's log."""
    from lsr_os import node as node_lib

    click.echo(node_lib.logs(port, lines))


if __name__ == "__main__":
    main()
