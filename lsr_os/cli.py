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
from click.core import ParameterSource

from lsr_os import __version__
from lsr_os.config import CHUNK_DOCS, CONCURRENCY, POOL_MAXSIZE, ClusterConfig, split_urls
from lsr_os.errors import LsrOsError
from lsr_os.engines.elasticsearch.node import DEFAULT_VERSION as ES_NODE_VERSION
from lsr_os.node import DEFAULT_VERSION as NODE_VERSION
from lsr_os.node import ENGINES as NODE_ENGINES
from lsr_os.plugin import DEFAULT_SCALE as TEXT_SCALE


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
    """Multimodal learned sparse retrieval served from OpenSearch or Elasticsearch."""
    level = logging.DEBUG if verbose > 1 or debug else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The clients log every failed request with a traceback; our errors already say what failed.
    for name in ("opensearch", "elastic_transport"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.ERROR)


def _env(name: str) -> list[str]:
    """A connection option's environment variables: the OpenSearch name first, then the
    Elasticsearch one (the first that is set wins)."""
    return [f"OPENSEARCH_{name}", f"ELASTICSEARCH_{name}"]


def cluster_options(func):
    """Add the shared connection options; the command receives `cluster: ClusterConfig`."""

    @click.option("--url", "urls", multiple=True, envvar=_env("URL"), show_envvar=True,
                  help="Cluster URL, OpenSearch or Elasticsearch (told from its answer); repeat or comma-separate "
                       "for several nodes. [default: http://localhost:9200]")
    @click.option("--user", envvar=_env("USER"), show_envvar=True, help="Basic-auth user.")
    @click.option("--password", envvar=_env("PASSWORD"), show_envvar=True,
                  help="Basic-auth password (prefer the environment variable).")
    @click.option("--api-key", envvar="ELASTICSEARCH_API_KEY", show_envvar=True,
                  help="Elasticsearch API key (the `encoded` value Elasticsearch returns; prefer the environment "
                       "variable).")
    @click.option("--ca-certs", type=click.Path(exists=True, dir_okay=False), envvar=_env("CA_CERTS"),
                  show_envvar=True, help="CA bundle to verify the cluster's TLS certificate.")
    @click.option("--insecure", is_flag=True, help="Do not verify TLS certificates.")
    @click.option("--timeout", type=float, default=30.0, show_default=True, help="Request timeout in seconds.")
    @click.option("--aws-region", envvar="OPENSEARCH_AWS_REGION", show_envvar=True,
                  help="Sign requests with AWS SigV4 for Amazon OpenSearch Service in this region (needs boto3).")
    @click.option("--aws-service", type=click.Choice(["es", "aoss"]), default="es", show_default=True,
                  help="SigV4 service: es (managed domain) or aoss (Serverless).")
    @functools.wraps(func)
    def wrapper(*args, urls, user, password, api_key, ca_certs, insecure, timeout, aws_region, aws_service, **kwargs):
        if user is not None and password is None:  # never on the command line, never echoed
            password = click.prompt(f"Password for {user}", hide_input=True, err=True)
        cluster = ClusterConfig(urls=split_urls(urls), user=user, password=password, api_key=api_key,
                                ca_certs=ca_certs, insecure=insecure, timeout=timeout,
                                aws_region=aws_region, aws_service=aws_service)
        cluster.check()
        return func(*args, cluster=cluster, **kwargs)

    return wrapper


def echo_json(obj) -> None:
    click.echo(json.dumps(obj, indent=2, ensure_ascii=False))


@main.command("info")
@cluster_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info(cluster: ClusterConfig, as_json: bool) -> None:
    """Check the connection: the cluster's engine, version, health and nodes."""
    from lsr_os.engines import connect

    facts = connect(cluster).describe()
    if as_json:
        echo_json(facts)
    else:
        click.echo(f"{facts['engine']} {facts['version']} at {', '.join(cluster.urls)}: cluster {facts['cluster_name']} "
                   f"is {facts['status']} with {facts['number_of_nodes']} node(s)")


# --------------------------------------------------------------------------- local node

def node_port_options(func):
    """--port and --engine of the commands that find a started cluster by its port."""
    func = click.option("--engine", type=click.Choice(NODE_ENGINES), default=None,
                        help="Without --port: use this engine's default port; with it: check that this engine runs "
                             "there [default: whatever the cluster's state says].")(func)
    return click.option("--port", type=int, default=None,
                        help="HTTP port of the local node (the first one of a cluster) [default: 9200, "
                             "with --engine elasticsearch 9400].")(func)


@main.group()
def node() -> None:
    """Run a local OpenSearch or Elasticsearch node without Docker (from Maven Central artifacts)."""


@node.command("start")
@click.option("--engine", type=click.Choice(NODE_ENGINES), default="opensearch", show_default=True,
              help="The search engine the nodes run.")
@click.option("--version", "os_version", default=None,
              help=f"Engine version: OpenSearch [default: {NODE_VERSION}], Elasticsearch [default: {ES_NODE_VERSION}].")
@click.option("--port", type=int, default=None,
              help="HTTP port of the first node on 127.0.0.1 (node i uses port+i; transport port+100+i) "
                   "[default: 9200 for OpenSearch, 9400 for Elasticsearch, so both run side by side].")
@click.option("--nodes", type=click.IntRange(1, 9), default=1, show_default=True, help="Number of nodes in the local cluster.")
@click.option("--data", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data folder [default: under the node's state folder].")
@click.option("--heap", default="1g", show_default=True, help="JVM heap of each node, e.g. 512m or 2g.")
@click.option("--wait", type=float, default=180.0, show_default=True,
              help="Seconds to wait, once the nodes are launched, for the cluster to answer (yellow or green); "
                   "downloads and the plugin build come before and are not counted. Past it the nodes are "
                   "stopped and the error shows the end of their logs.")
@click.option("--path-repo", "repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The nodes' path.repo (snapshot folders live under it) [default: <state folder>/snapshots].")
@click.option("--plugin/--no-plugin", "plugin", default=None,
              help="With the lsr-os plugin (typed-text search in the cluster): --plugin fails when it "
                   "cannot be built (needs Maven and a JDK 21+), --no-plugin never installs it [default: install "
                   "it when it can be built, else start without it and say so].")
@click.option("--secure", is_flag=True,
              help="Elasticsearch only: HTTPS and TLS between the nodes, with a CA and certificate made by the "
                   "distribution's own tools, and a superuser `admin` whose password is written to a file "
                   "(mode 0600) in the state folder; the output and `node status` say where.")
def node_start(engine: str, os_version: str | None, port: int | None, nodes: int, data: Path | None, heap: str,
               wait: float, repo: Path | None, plugin: bool | None, secure: bool) -> None:
    """Provision (once, cached) and start a local node or cluster; harmless when it already runs.

    The lsr-os plugin is built with Maven once per plugin source, engine and version (cached
    like the distribution) and installed before the nodes start. Nodes of the cluster that are
    stopped (e.g. with `node stop --node node-2`) are started again and rejoin with their data.
    """
    from lsr_os import node as node_lib

    mode = "auto" if plugin is None else "require" if plugin else "skip"
    spec = node_lib.NodeSpec(version=os_version, port=port, data=data, heap=heap, nodes=nodes, repo=repo,
                             plugin=mode, engine=engine, secure=secure)
    for state in node_lib.start(spec, timeout=wait, step=lambda message: click.echo(message, err=True)):
        verb = "already running" if state.already_running else "started"
        with_plugin = f", lsr-os plugin {state.plugin}" if state.plugin else ", without the lsr-os plugin"
        click.echo(f"{state.name}: {spec.layout.product} {state.version} {verb} at {state.url} "
                   f"(pid {state.pid}{with_plugin}, log {state.log_file})")
    if secure:
        echo_security(node_lib.security_info(spec.port))


def echo_security(security: dict) -> None:
    """How to connect to a secured local cluster: its CA and each user's password file (never a password)."""
    click.echo(f"secured: CA {security['ca_certs']}")
    for name, user in security["users"].items():
        click.echo(f"user {name} (role {user['role']}): password in {user['password_file']}")


@node.command("status")
@node_port_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def node_status(port: int | None, engine: str | None, as_json: bool) -> None:
    """Show whether the local node runs, its engine, version and cluster health, and for a secured
    one its CA and users' password files."""
    from lsr_os import node as node_lib

    port = node_lib.resolve_port(port, engine)
    status = node_lib.status(port)
    if as_json:
        echo_json(status)
    else:
        for n in status["nodes"]:
            product = node_lib.layout(n["engine"]).product
            state = f"running {product} {n['version']}" if n["running"] else "stopped"
            click.echo(f"{n['name']}: {state} at {n['url']} (pid {n['pid']})")
        if status["running"]:
            click.echo(f"cluster {status['cluster_name']}: {status['health']}, {status['number_of_nodes']} node(s)")
        else:
            click.echo(f"no node running on port {port}")
        if status["security"]:
            echo_security(status["security"])
    if not status["running"]:
        sys.exit(1)


@node.command("stop")
@node_port_options
@click.option("--node", "names", multiple=True, help="Stop only this node, e.g. node-2 (repeatable) [default: all].")
def node_stop(port: int | None, engine: str | None, names: tuple[str, ...]) -> None:
    """Stop the local node(s) and wait until their processes are gone."""
    from lsr_os import node as node_lib

    port = node_lib.resolve_port(port, engine)
    stopped = node_lib.stop(port, list(names) or None)
    click.echo(f"stopped {len(stopped)} node(s) (pids {', '.join(map(str, stopped))})" if stopped
               else f"no node was running on port {port}")


@node.command("logs")
@node_port_options
@click.option("-n", "--lines", type=int, default=50, show_default=True, help="Lines of each node's log.")
def node_logs(port: int | None, engine: str | None, lines: int) -> None:
    """Print the last lines of the local node's log."""
    from lsr_os import node as node_lib

    click.echo(node_lib.logs(node_lib.resolve_port(port, engine), lines))


@node.command("add-user")
@click.argument("name")
@click.option("--role", default="viewer", show_default=True,
              help="A built-in role, e.g. viewer (read-only), editor, superuser.")
@node_port_options
def node_add_user(name: str, role: str, port: int | None, engine: str | None) -> None:
    """Add a user to a local cluster started with --secure; its password goes to a file (mode 0600)
    whose path is printed. The same name and role again is harmless."""
    from lsr_os import node as node_lib

    port = node_lib.resolve_port(port, engine)
    click.echo(f"user {name} (role {role}) on port {port}: password in {node_lib.add_user(port, name, role)}")


# --------------------------------------------------------------------------- one meaning per word
#
# Every option below means the same in every command that takes it: --model is always the dense
# encoder, --head the sparse head, --collection images|captions, --images an image root, --data a
# Karpathy JSON, --captions a captions file, --dense a dense files folder, --sparse sparse JSONL,
# --split a selection of splits ("train" includes restval), --top-k document pruning, -k the
# number of hits, --no-expansion "captions keep their own tokens".

_PATH_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)
_PATH_DIR = click.Path(exists=True, file_okay=False, path_type=Path)
WORDS = {
    "sparse": click.option("--sparse", type=click.Path(exists=True, path_type=Path),
                           help="Sparse JSONL: a file (one collection) or a folder with images.jsonl and captions.jsonl."),
    "dense": click.option("--dense", type=_PATH_DIR,
                          help="Dense files folder (img_embs.parquet, text_embs.parquet, dataset_meta.json); needs --head."),
    "data": click.option("--data", type=_PATH_FILE,
                         help="Karpathy-split JSON (MSCOCO, Flickr30k) of a dataset; needs --images."),
    "captions": click.option("--captions", type=_PATH_FILE,
                             help="Captions file of a dataset: JSONL or CSV with image, caption[, split]."),
    "images": click.option("--images", type=_PATH_DIR,
                           help="Image root of --data or --captions; image paths must stay inside it "
                                "[default for --captions: its folder]."),
    "model": click.option("--model", help="Dense encoder: Salesforce/blip-itm-{base,large}-{coco,flickr}, a local "
                                          "BLIP folder, an ALBEF .pth checkpoint, a folder saved by lsr-os, or KIND:SOURCE."),
    "head": click.option("--head", type=click.Path(exists=True, path_type=Path),
                         help="Sparse head checkpoint folder (own or the authors' d2s format)."),
    "no_expansion": click.option("--no-expansion", is_flag=True,
                                 help="Captions (and text queries: --mode own-tokens) keep only their own tokens; images are "
                                      "always expanded."),
    "batch_size": click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True,
                               help="Images per model call."),
    "text_batch_size": click.option("--text-batch-size", type=click.IntRange(1), default=256, show_default=True,
                                    help="Captions (or dense vectors) per model call."),
    "workers": click.option("--workers", type=click.IntRange(0), default=None,
                            help="Image-decoding processes [default: min(8, cores - 1)]."),
    "device": click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when available]."),
    "top_k": click.option("--top-k", type=click.IntRange(1), default=None,
                          help="Keep each document's k heaviest terms (document pruning)."),
    "threshold": click.option("--threshold", type=float, default=0.0, show_default=True,
                              help="Drop document weights <= this."),
    "prefix": click.option("--prefix", default="lsr", show_default=True,
                           help="Collections are served as <prefix>-images and <prefix>-captions."),
    "json": click.option("--json", "as_json", is_flag=True, help="Machine-readable output."),
    "demo": click.option("--demo", type=_PATH_DIR,
                         help="The output folder of `lsr-os demo`: its model and head are the defaults (so are its "
                              "prefix where the command reads collections, and its image root where it shows images)."),
}


def words(*names: str):
    """Apply the shared options `names` (see WORDS) to a command."""
    def decorate(func):
        for name in reversed(names):
            func = WORDS[name](func)
        return func
    return decorate


def demo_defaults(*names: str, keep: bool = False):
    """Add `--demo DIR` (see WORDS): the demo folder's values fill the options `names` (model, head,
    prefix, images) that were not given on the command line. With `keep`, the command receives
    `demo` too."""
    def decorate(func):
        @words("demo")
        @functools.wraps(func)
        def wrapper(*args, demo, **kwargs):
            kwargs.update(_from_demo(demo, {name: kwargs[name] for name in names}))
            return func(*args, **kwargs, **({"demo": demo} if keep else {}))
        return wrapper
    return decorate


def _from_demo(demo: Path | None, values: dict) -> dict:
    """`values` with those not given on the command line (None, or a default) taken from the demo folder."""
    if demo is None:
        return values
    from lsr_os.search import demo_defaults as merged

    source = click.get_current_context().get_parameter_source
    return {**values, **merged(demo, **{name: None for name, value in values.items()
                                         if value is None or source(name) is ParameterSource.DEFAULT})}


def split_option(default: str | None):
    return click.option("--split", default=default, show_default=default is not None,
                        help="Splits, comma-separated; 'train' includes restval" + ("" if default else " [default: all]") + ".")


def source_options(split_default: str | None = None, demo_prefix: bool = False):
    """The record source group (one of --sparse, --dense, --data/--captions) and --demo (its model
    and head; with `demo_prefix`, for a command that reads collections, its prefix too); the command
    receives `source: SourceOptions` (checked and opened by `lsr_os.records.open_source`)."""
    def decorate(func):
        @words("sparse", "dense", "data", "captions", "images", "model", "head", "no_expansion", "batch_size",
               "text_batch_size", "workers", "device", "demo")
        @split_option(split_default)
        @functools.wraps(func)
        def wrapper(*args, sparse, dense, data, captions, images, model, head, no_expansion, batch_size,
                    text_batch_size, workers, device, split, demo, **kwargs):
            from lsr_os.records import SourceOptions

            # the demo's models where the source runs them (open_source refuses a model it would not run)
            runs = {"model": model, "head": head} if data or captions else {"head": head} if dense else {}
            filled = _from_demo(demo, {**runs, **({"prefix": kwargs["prefix"]} if demo_prefix else {})})
            model, head = filled.pop("model", model), filled.pop("head", head)
            kwargs.update(filled)

            source = SourceOptions(sparse=sparse, dense=dense, data=data, captions=captions, images=images,
                                   model=model, head=head, split=split, expand=not no_expansion,
                                   batch_size=batch_size, text_batch_size=text_batch_size, workers=workers,
                                   device=device)
            return func(*args, source=source, **kwargs)
        return wrapper
    return decorate


# --------------------------------------------------------------------------- serving: ingest, search, evaluate


@main.command("ingest")
@cluster_options
@source_options()
@click.option("--collection", type=click.Choice(["images", "captions"]), multiple=True,
              help="Which collection(s) [default: both, or the one a sparse file holds].")
@click.option("--index", "alias", default=None, help="Alias to serve one collection under [default: <prefix>-<collection>].")
@words("prefix")
@click.option("--fresh", is_flag=True, help="Do not resume an unfinished load: start a new index.")
@click.option("--keep-old", is_flag=True, help="Keep the replaced index instead of deleting it after the swap.")
@click.option("--allow-empty", is_flag=True, help="Serve the new index even when it holds no documents.")
@click.option("--max-failed", type=click.IntRange(0), default=None,
              help="Serve the new index only when at most this many records failed "
                   "[default: 0 when replacing a served collection, no limit for a first load].")
@click.option("--chunk-docs", type=click.IntRange(1), default=CHUNK_DOCS, show_default=True,
              help="Documents per bulk request.")
@click.option("--chunk-mb", type=click.FloatRange(0.01), default=10.0, show_default=True, help="Max MiB per bulk request.")
@click.option("--concurrency", type=click.IntRange(1, POOL_MAXSIZE), default=CONCURRENCY, show_default=True,
              help="Bulk requests in flight.")
@click.option("--max-retries", type=click.IntRange(0), default=8, show_default=True,
              help="Re-sends of documents refused with 429/5xx (exponential backoff).")
@words("top_k", "threshold")
@click.option("--shards", type=click.IntRange(1), default=None,
              help="Primary shards of the new index [default: from the collection's size and the data nodes; "
                   "see the README].")
@click.option("--replicas", type=click.IntRange(0), default=None,
              help="Replicas, kept during the load too [default: 1 on a cluster of 2+ data nodes, else 0].")
@click.option("--exclude-vectors", is_flag=True,
              help="Leave the sparse vector out of _source: a much smaller index (explain still works), but "
                   "the cluster alone can no longer reindex it (snapshots still hold everything). On "
                   "Elasticsearch 9, which never keeps vectors in _source, it changes nothing.")
@click.option("--force-merge", is_flag=True, help="Merge the index to one segment before serving it (a one-off load).")
@click.option("--text-field/--no-text-field", "text_field", default=None,
              help="Give the images a `text` field that the lsr-os plugin ranks typed text on (a plain "
                   "`match`, Dashboards), folded from the head's query weights; --text-field makes a missing "
                   "plugin or query weights an error [default: on when the head has query weights and every node "
                   "runs the plugin]. With --sparse, --head names the query weights.")
@click.option("--text-scale", type=click.IntRange(1), default=TEXT_SCALE, show_default=True,
              help="Folded weights are integers: each term's score is kept to 0.5 / scale.")
@click.option("--failures", "failures_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Failures file (JSONL) [default: ingest-failures-<alias>.jsonl].")
@words("json")
def ingest_cmd(cluster: ClusterConfig, source, collection: tuple[str, ...], alias: str | None, prefix: str,
               fresh: bool, keep_old: bool, allow_empty: bool, max_failed: int | None, chunk_docs: int,
               chunk_mb: float, concurrency: int, max_retries: int, top_k: int | None, threshold: float,
               shards: int | None, replicas: int | None, exclude_vectors: bool, force_merge: bool,
               text_field: bool | None, text_scale: int, failures_path: Path | None, as_json: bool) -> None:
    """Load sparse records into a new versioned index per collection and swap its alias when sound.

    Records come from sparse JSONL, dense files plus a head, or a dataset encoded on the fly. An
    interrupted load resumes when re-run with the same input. Skipped items are listed in the
    failures file. Exit status: 0 when every record was indexed and served, 4 when some failed,
    5 when a collection was not swapped in (the old one still serves).
    """
    import dataclasses

    from lsr_os import index as ix
    from lsr_os.engines import connect
    from lsr_os.errors import EXIT_FAILURES, EXIT_NOT_SWAPPED
    from lsr_os.records import open_source

    head = source.head  # the query weights of the images' text field
    if source.sparse is not None:  # sparse records need no head to be made: it only names those weights
        source = dataclasses.replace(source, head=None)
    records = open_source(source)
    collections = records.collections(collection)
    options = ix.IngestOptions(fresh=fresh, keep_old=keep_old, allow_empty=allow_empty, max_failed=max_failed,
                               chunk_docs=chunk_docs, chunk_bytes=int(chunk_mb * 2**20), concurrency=concurrency,
                               retry=ix.RetryPolicy(max_attempts=max_retries), top_k=top_k, threshold=threshold,
                               shards=shards, replicas=replicas, exclude_vectors=exclude_vectors,
                               force_merge=force_merge, text_field=text_field, text_scale=text_scale)
    failed = not_swapped = False
    for report in ix.ingest_collections(connect(cluster), records.stream, collections, options, alias, prefix,
                                        failures_path, records.image_root, head):
        failed |= report.failed > 0
        not_swapped |= report.not_swapped is not None
        if as_json:
            echo_json(report.to_dict())
        else:
            _print_ingest(report, keep_old)
    if not_swapped or failed:
        sys.exit(EXIT_NOT_SWAPPED if not_swapped else EXIT_FAILURES)


def _print_ingest(report, keep_old: bool) -> None:
    if not report.index:
        click.secho(f"{report.alias}: {report.not_swapped}", fg="red", err=True)
        return
    served = "not served" if report.not_swapped else "served"
    click.echo(f"{report.alias}: {report.index} {served}, {report.count} documents ({report.sent} sent, "
               f"{report.failed} failed, {report.docs_per_s:.0f} docs/s"
               f"{f', resumed: {report.already_indexed} already there' if report.resumed else ''})"
               f"{'; typed text ranks it in the cluster (its text field)' if report.text_field else ''}")
    if report.failed:
        kinds = ", ".join(f"{n} {what}" for what, n in sorted(report.failed_by_what.items()))
        click.secho(f"  {report.failed} failures ({kinds}) listed in {report.failures_file}", fg="yellow", err=True)
    if report.not_swapped:
        click.secho(f"  not swapped: {report.not_swapped}", fg="red", err=True)
    elif report.replaced:
        click.echo(f"  replaced {', '.join(report.replaced)} ({'kept' if keep_old else 'deleted'})")


@main.command("search")
@cluster_options
@click.argument("text", required=False)
@click.option("--image", "image_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Image -> text: search the captions with this image.")
@click.option("--vector-json", help="A raw query {term: weight}, inline or a file; needs no model.")
@words("model", "head")
@click.option("--mode", type=click.Choice(["auto", "expanded", "own-tokens", "inference-free"]), default="auto",
              show_default=True,
              help="How a text becomes a query: expanded (model + head), own-tokens (model + head, the text's own "
                   "word pieces), inference-free (the head's query weights, no model); auto: expanded with a "
                   "model, else inference-free.")
@words("no_expansion", "device")
@demo_defaults("model", "head", "prefix", keep=True)
@click.option("--collection", type=click.Choice(["images", "captions"]), default=None,
              help="Collection to search [default: images for text, captions for --image].")
@click.option("--index", "index_name", default=None, help="Alias or index to search [default: <prefix>-<collection>].")
@click.option("--prefix", default=None, help="Collections are served as <prefix>-images and <prefix>-captions "
                                             "[default: lsr, or the demo's].")
@click.option("-k", "k", type=click.IntRange(1, 10000), default=10, show_default=True, help="Number of hits.")
@click.option("--max-terms", type=click.IntRange(1), default=None,
              help="Keep the query's heaviest terms [default: the cluster's max clause count].")
@click.option("--first-terms", type=click.IntRange(1), default=None,
              help="Two-phase search: match with the query's heaviest N terms, then rescore --window hits "
                   "with all of them [default: one phase].")
@click.option("--window", type=click.IntRange(1), default=100, show_default=True,
              help="Hits rescored with the full query in two-phase search.")
@click.option("--split", default=None, help="Only documents of these splits (comma-separated; 'train' includes restval).")
@click.option("--explain", is_flag=True, help="Show each hit's matching terms and the query DSL (for Dev Tools).")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the hits' images as a contact sheet (PNG) at this path, from the collection's image "
                   "root (see --images).")
@click.option("--images", "images_root", type=_PATH_DIR, default=None,
              help="Image root of the collection, for --sheet [default: the one recorded at ingest; for the "
                   "demo's collections, the demo's].")
@words("json")
def search_cmd(cluster: ClusterConfig, text: str | None, image_path: Path | None, vector_json: str | None,
               model: str | None, head: Path | None, mode: str, no_expansion: bool, device: str | None, demo: Path | None,
               collection: str | None, index_name: str | None, prefix: str | None, k: int, max_terms: int | None,
               first_terms: int | None, window: int, split: str | None, explain: bool, sheet: Path | None,
               images_root: Path | None, as_json: bool) -> None:
    """Search with a text, an image or a raw term-weight vector; prints rank, id, score, image or caption."""
    from lsr_os.search import run_search

    result = run_search(cluster, text=text, image=image_path, vector_json=vector_json, model=model, head=head,
                        mode=mode, expand=not no_expansion, collection=collection, index=index_name, prefix=prefix, k=k,
                        max_terms=max_terms, split=split, explain=explain, first_terms=first_terms, window=window,
                        device=device)
    if sheet is not None:
        from lsr_os.search import engine_for
        from lsr_os.sheet import search_sheet

        drawn = search_sheet(result, sheet, engine_for(cluster), images_root, demo)
        if drawn.missing:
            click.secho(f"Warning: {len(drawn.missing)} of the hits' images are not under {drawn.root} (their tiles "
                        f"say so): {', '.join(drawn.missing[:5])}{' ...' if len(drawn.missing) > 5 else ''}",
                        fg="yellow", err=True)
    for warning in result.warnings:
        click.secho(f"Warning: {warning}", fg="yellow", err=True)
    if as_json:
        echo_json({**result.to_dict(), **({"sheet": str(sheet)} if sheet else {})})
        return
    terms = result.query_terms()
    if result.text is not None:
        click.echo(f"mode: {result.mode}")
    for kind in ("own", "expansion"):
        if terms[kind]:
            shown = ", ".join(f"{t} {w:.2f}" for t, w in list(terms[kind].items())[:12])
            more = f" (+{len(terms[kind]) - 12} more)" if len(terms[kind]) > 12 else ""
            click.echo(f"{kind} terms: {shown}{more}")
    if not result.hits:
        click.echo(f"no document of {result.index} matches the {len(result.query)} query terms")
    for row in result.hits:
        label = row["label"] + (f"  [image {row['image']}]" if row.get("caption") and row.get("image") else "")
        click.echo(f"{row['rank']:>3}  {row['id']:<20} {row['score']:10.4f}  {label}")
        if explain:
            click.echo("       " + ", ".join(f"{m['term']} {m['query_weight']:.2f}x{m['doc_weight']:.2f}"
                                         for m in row["matches"][:10]))
    if explain:
        click.echo(f"\n# Dev Tools: GET {result.index}/_search")
        click.echo(compact_json(result.dsl))
    if sheet is not None:
        click.echo(f"contact sheet: {sheet}")


def compact_json(body: dict) -> str:
    """JSON for people: indented, but each innermost clause on one line."""
    def walk(obj, indent: int) -> str:
        pad = "  " * indent
        flat = json.dumps(obj, ensure_ascii=False)
        if not isinstance(obj, (dict, list)) or len(flat) <= 100 - len(pad):
            return flat
        if isinstance(obj, list):
            return "[\n" + ",\n".join(pad + "  " + walk(v, indent + 1) for v in obj) + "\n" + pad + "]"
        return "{\n" + ",\n".join(f"{pad}  {json.dumps(k)}: {walk(v, indent + 1)}" for k, v in obj.items()) + "\n" + pad + "}"
    return walk(body, 0)


@main.command("serve")
@cluster_options
@words("model", "head", "device")
@demo_defaults("model", "head", "prefix", keep=True)
@click.option("--prefix", default=None, help="Collections are served as <prefix>-images and <prefix>-captions "
                                             "[default: lsr, or the demo's].")
@click.option("--images", type=_PATH_DIR, default=None,
              help="Image root: hits' images (thumbnails) are served from under it [default: the one recorded at "
                   "ingest of <prefix>-images; for the demo's collections, the demo's; none].")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the server to the network.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port to listen on.")
@click.option("--max-batch", type=click.IntRange(1), default=32, show_default=True,
              help="Queries encoded in one model call (dynamic batching); 1 turns batching off.")
@click.option("--batch-wait-ms", type=click.FloatRange(0), default=2.0, show_default=True,
              help="How long a query waits for others to share its model call.")
@click.option("--max-pending", type=click.IntRange(1), default=256, show_default=True,
              help="Queries that may wait for the model; beyond that the server answers 503.")
@click.option("--max-upload-mb", type=click.FloatRange(0.01), default=10.0, show_default=True,
              help="Largest image upload.")
@click.option("--max-image-mpix", type=click.FloatRange(0.01), default=50.0, show_default=True,
              help="Largest decoded upload in megapixels (decompression bombs are refused).")
@click.option("--torch-threads", type=click.IntRange(1), default=None,
              help="CPU threads of the model [default: torch's, one per core].")
def serve_cmd(cluster: ClusterConfig, model: str | None, head: Path | None, device: str | None, prefix: str | None,
              images: Path | None, host: str, port: int, max_batch: int, batch_wait_ms: float,
              max_pending: int, max_upload_mb: float, max_image_mpix: float, torch_threads: int | None,
              demo: Path | None) -> None:
    """Serve the search application: JSON API, web page, image thumbnails; models stay warm.

    POST /search and /encode, GET /media/PATH and /healthz; the web page at /, the API at /docs.
    With --head alone (a head with query weights) it answers text queries inference-free, with no
    model; without --model and --head (or --demo), vector queries only.
    """
    from lsr_os import serve as serve_lib

    config = serve_lib.ServeConfig(prefix=prefix or "lsr", model=model, head=head, images=images, demo=demo,
                                   device=device, max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_pending=max_pending,
                                   max_upload_bytes=int(max_upload_mb * 2**20),
                                   max_pixels=int(max_image_mpix * 1e6), torch_threads=torch_threads)
    sock = serve_lib.listen(host, port)
    service = serve_lib.open_service(cluster, config)
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"serving {config.prefix}-images and {config.prefix}-captions at http://{shown}:{sock.getsockname()[1]}/ "
               f"(API: /docs; {service.summary}); "
               f"Ctrl-C stops", err=True)
    serve_lib.run(service, sock, access_log=logging.getLogger().isEnabledFor(logging.INFO))


@main.command("evaluate")
@cluster_options
@source_options(split_default="test", demo_prefix=True)
@words("prefix")
@click.option("--images-index", default=None, help="Alias or index of the images [default: <prefix>-images].")
@click.option("--captions-index", default=None, help="Alias or index of the captions [default: <prefix>-captions].")
@click.option("-k", "k", type=click.IntRange(10), default=10, show_default=True, help="Hits per query.")
@click.option("--query-batch", type=click.IntRange(1), default=64, show_default=True, help="Queries per _msearch.")
@click.option("--max-terms", type=click.IntRange(1), default=None, help="Query term cap [default: max clause count].")
@click.option("--first-terms", type=click.IntRange(1), default=None,
              help="Two-phase search: match with the query's heaviest N terms, then rescore --window hits "
                   "with all of them [default: one phase].")
@click.option("--window", type=click.IntRange(1), default=100, show_default=True,
              help="Hits rescored with the full query in two-phase search.")
@words("top_k", "threshold")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("eval"),
              show_default=True, help="Folder for TREC runs and report.json.")
@words("json")
def evaluate_cmd(cluster: ClusterConfig, source, prefix: str, images_index: str | None, captions_index: str | None,
                 k: int, query_batch: int, max_terms: int | None, first_terms: int | None, window: int,
                 top_k: int | None, threshold: float, out_dir: Path, as_json: bool) -> None:
    """Both directions of a split through the cluster, with exact in-memory scoring beside it.

    The split's records come from the same sources as `ingest` (give the --top-k/--threshold the
    ingest used); with dense files, the dense teacher's figures are added.
    """
    from lsr_os.engines import connect
    from lsr_os.evaluate import evaluate_source
    from lsr_os.records import open_source

    records = open_source(source)
    report = evaluate_source(connect(cluster), records, source.split, images_index or f"{prefix}-images",
                             captions_index or f"{prefix}-captions", top_k, threshold, k=k, batch_size=query_batch,
                             max_terms=max_terms, first_terms=first_terms, window=window, out_dir=out_dir)
    if as_json:
        echo_json(report)
        return
    for name, label in (("t2i", "text -> image"), ("i2t", "image -> text")):
        sec = report[name]
        click.echo(f"{label}: {sec['queries']} queries, {sec['documents']} documents")
        for system in ("cluster", "exact", "dense"):
            if system in sec:
                m = sec[system]["metrics"]
                click.echo(f"  {system:<8} " + "  ".join(f"{key} {100 * v:5.1f}" for key, v in m.items()))
        p, lat = sec["parity"], sec["cluster"]["latency_took"]
        click.echo(f"  parity   top-{k} overlap {p[f'top{k}_overlap']:.4f} ({p[f'top{k}_overlap_ties']:.4f} with ties "
                   f"at rank {k} counted), Kendall tau {p['kendall_tau']:.4f}")
        click.echo(f"  latency  cluster mean {lat['mean_ms']:.1f} ms, p50 {lat['p50_ms']:.1f}, p99 {lat['p99_ms']:.1f}"
                   f" (server took); exact p50 {sec['exact']['latency']['p50_ms']:.2f} ms")
        sp = sec["sparsity"]
        click.echo(f"  sparsity FLOPs {sp['flops']:.2f}, terms a query {sp['query_terms']:.1f}, "
                   f"a document {sp['document_terms']:.1f}")
    _print_query_modes(report)
    click.echo(f"runs and report.json in {out_dir}")


def _print_query_modes(report: dict) -> None:
    """Text -> image by query mode, served figures (evaluate, demo): one row a mode."""
    modes = report.get("t2i_modes")
    if not modes:
        return
    k = report.get("k", 10)
    click.echo("text -> image by query mode (through the cluster, in %; parity: top-10 overlap with exact "
               "scoring, ties counted):")
    click.echo(f"  {'mode':<15}{'R@1':>7}{'R@5':>7}{'R@10':>7}{'MRR@10':>8}{'FLOPs':>8}{'terms/q':>9}"
               f"{'words kept':>12}{'parity':>8}")
    for mode, sec in modes.items():
        m, sp = sec["cluster"]["metrics"], sec["sparsity"]
        kept = f"{100 * sec['words_kept']:.1f}" if "words_kept" in sec else "-"
        click.echo(f"  {mode:<15}" + "".join(f"{100 * m[x]:7.1f}" for x in ("R@1", "R@5", "R@10"))
                   + f"{100 * m['MRR@10']:8.1f}{sp['flops']:8.2f}{sp['query_terms']:9.1f}{kept:>12}"
                   + f"{sec['parity'][f'top{k}_overlap_ties']:8.3f}")


@main.group("collections")
def collections_group() -> None:
    """List or delete the collections lsr-os has built."""


@collections_group.command("list")
@cluster_options
@click.option("--head", type=_PATH_DIR, default=None,
              help="Say which text fields were folded from other query weights than this head's [default: than "
                   "those the head each was folded from has now].")
@words("json")
def collections_list(cluster: ClusterConfig, head: Path | None, as_json: bool) -> None:
    """Every lsr-os index: alias, state, documents, size, served or not, typed-text field."""
    from lsr_os.engines import connect
    from lsr_os.index import list_collections

    rows = list_collections(connect(cluster), head=head)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no lsr-os collections")
        return
    wide = {key: max(len(str(r[key] or "")) for r in rows) for key in ("alias", "index")}
    for r in rows:
        mark = "*" if r["served"] else " "
        text = ("  text (other weights)" if r["text_field_stale"] else "  text") if r["text_field"] else ""
        click.echo(f"{mark} {r['alias'] or '':<{wide['alias']}}  {r['index']:<{wide['index']}}  {r['state']:<9}"
                   f"{r['docs']:>11,} docs {r['bytes'] / 2**20:9.1f} MiB{text}")
    click.echo("* = served by its alias; a loading index counts the documents indexed so far; text = typed text "
               "ranks it in the cluster (the lsr-os plugin's field)")
    for r in rows:
        if r["text_field_stale"]:
            click.secho(f"Warning: {r['text_field_stale']}", fg="yellow", err=True)


@collections_group.command("delete")
@cluster_options
@click.argument("alias")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def collections_delete(cluster: ClusterConfig, alias: str, yes: bool) -> None:
    """Delete a collection: its alias and every index version built for it."""
    from lsr_os.engines import connect
    from lsr_os.index import delete_collection

    engine = connect(cluster)
    if not yes:
        click.confirm(f"delete {alias} and all its index versions?", abort=True)
    for name in delete_collection(engine, alias):
        click.echo(f"deleted {name}")


@main.command("dashboards")
@words("prefix")
@click.option("--for", "app", type=click.Choice(["opensearch-dashboards", "kibana"]), default="opensearch-dashboards",
              show_default=True, help="The app that imports them: OpenSearch Dashboards, or Kibana (Elasticsearch).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the NDJSON here [default: standard output].")
def dashboards_cmd(prefix: str, app: str, out: Path | None) -> None:
    """Saved objects for the collections of a prefix, for OpenSearch Dashboards or (--for kibana)
    Kibana: a data view (index pattern) and a saved search per collection. Import them in Stack
    Management -> Saved objects.

    The images search is saved with Lucene syntax and sorted by score: on a cluster with the lsr-os
    plugin, words typed into Discover's search bar then rank the images (Dashboards' DQL would only
    filter)."""
    from lsr_os.index import dashboards_objects

    text = dashboards_objects(prefix, app)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        name = "Kibana" if app == "kibana" else "Dashboards"
        click.echo(f"wrote {out}: import it in {name} (Stack Management -> Saved objects -> Import)")


# --------------------------------------------------------------------------- encoding datasets


@main.command("encode")
@demo_defaults("model")
@words("model", "data", "images", "captions")
@split_option(None)
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--collection", type=click.Choice(["images", "captions"]), default=None,
              help="Encode one collection only [default: both].")
@words("batch_size", "text_batch_size", "device")
@click.option("--dtype", default=None, help="float32, bfloat16, float16 [default: bfloat16 on GPU, float32 on CPU].")
@words("workers")
@click.option("--shard", default=None, help="I/N: encode shard I of N (several machines, one output folder).")
@click.option("--part-size", type=int, default=8192, show_default=True,
              help="Vectors per parquet part (the most an interruption loses).")
@click.option("--max-batches", type=int, default=None, help="Stop after this many batches per side (a trial run).")
@words("json")
def encode_cmd(model: str | None, data: Path | None, images: Path | None, captions: Path | None, split: str | None,
               out: Path, collection: str | None, batch_size: int, text_batch_size: int, device: str | None,
               dtype: str | None, workers: int | None, shard: str | None, part_size: int, max_batches: int | None,
               as_json: bool) -> None:
    """Encode a dataset's images and captions to dense parquet files (the authors' layout).

    Resumes by default (ids already in OUT are skipped). Bad items are skipped and listed in
    OUT/failures*.jsonl; the exit status is 4 when any item failed. Sparse records come from
    `lsr-os sparsify` (or `ingest`) over the output.
    """
    from lsr_os.encode import EncodeOptions, encode_folder
    from lsr_os.errors import EXIT_FAILURES

    options = EncodeOptions(batch_size=batch_size, text_batch_size=text_batch_size, part_size=part_size,
                            max_batches=max_batches)
    report, encoder = encode_folder(model, out, data, images, captions, split, collection, options, workers, shard,
                                    device, dtype)
    if as_json:
        echo_json({**report.to_dict(), "encoder": encoder})
    else:
        for side in ("images", "captions"):
            c = getattr(report, side)
            click.echo(f"{side}: {c.encoded} encoded, {c.already} already done, {c.failed} failed (of {c.total})")
        if report.row_failures:
            click.echo(f"unreadable rows in the dataset file: {report.row_failures}")
        if report.stopped_early:
            click.echo(f"stopped after --max-batches {max_batches}; re-run to continue")
        click.echo(f"output: {report.out} ({report.seconds:.1f} s)")
    if report.failed:
        click.echo(f"{report.failed} items failed; reasons in {report.failures_file}", err=True)
        sys.exit(EXIT_FAILURES)


@main.command("sparsify")
@source_options()
@click.option("--collection", type=click.Choice(["images", "captions"]), multiple=True,
              help="Which collection(s) [default: both].")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: images.jsonl, captions.jsonl, failures-<collection>.jsonl.")
@words("top_k")
@click.option("--fresh", is_flag=True, help="Start the output over instead of resuming it.")
@words("json")
def sparsify_cmd(source, collection: tuple[str, ...], out: Path, top_k: int | None, fresh: bool,
                 as_json: bool) -> None:
    """Write sparse JSONL records (the one schema) from dense files or a dataset, through a head.

    Resumes by default: ids already in the output are neither encoded nor written again. Exit
    status 4 when any item was skipped (listed in the failures file).
    """
    from lsr_os.errors import EXIT_FAILURES
    from lsr_os.records import open_source, sparsify

    records = open_source(source)
    failed = False
    for report in sparsify(records, records.collections(collection), out, fresh=fresh, top_k=top_k,
                           progress=False if as_json else None):
        failed |= report.failed > 0
        if as_json:
            echo_json(report.__dict__)
            continue
        click.echo(f"{report.collection}: wrote {report.written} to {report.out}"
                   + (f"; {report.already} already there" if report.already else "")
                   + (f"; {report.failed} skipped, listed in {report.failures_file}" if report.failed else ""))
    if failed:
        sys.exit(EXIT_FAILURES)


# --------------------------------------------------------------------------- snapshots


def _repo_options(func):
    """--repo NAME and --location DIR, shared by the snapshot commands."""
    func = click.option("--location", default=None,
                        help="Folder of the fs repository, inside the nodes' path.repo; registers --repo "
                             "there when it is not yet registered.")(func)
    return click.option("--repo", "repository", default="lsr-os", show_default=True,
                        help="Snapshot repository name on the cluster.")(func)


@main.group("snapshot")
def snapshot_group() -> None:
    """Back up indices to a filesystem repository and restore them (also on another cluster)."""


@snapshot_group.command("create")
@cluster_options
@_repo_options
@click.argument("indices", nargs=-1)
@click.option("--name", "snapshot", default=None, help="Snapshot name [default: lsr-<UTC time>].")
@words("json")
def snapshot_create(cluster: ClusterConfig, repository: str, location: str | None, indices: tuple[str, ...],
                    snapshot: str | None, as_json: bool) -> None:
    """Snapshot INDICES (indices, aliases or wildcards) [default: every complete lsr-os collection]."""
    from lsr_os import snapshot as snap
    from lsr_os.engines import connect

    snapshot = snap.check_name(snapshot or snap.default_snapshot_name())  # before any request
    engine = connect(cluster)
    if location:
        snap.register_repository(engine, repository, location)
    result = snap.create_snapshot(engine, repository, snapshot, indices)
    if as_json:
        echo_json(result)
    else:
        click.echo(f"snapshot {repository}/{result['snapshot']}: {result['state']}, "
                   f"{result['shards'].get('successful', 0)} shard(s) of {', '.join(result['indices'])}")


@snapshot_group.command("list")
@cluster_options
@_repo_options
@words("json")
def snapshot_list(cluster: ClusterConfig, repository: str, location: str | None, as_json: bool) -> None:
    """The repository's snapshots, oldest first."""
    from lsr_os import snapshot as snap
    from lsr_os.engines import connect

    engine = connect(cluster)
    if location:
        snap.register_repository(engine, repository, location, readonly=True)
    rows = snap.list_snapshots(engine, repository)
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        click.echo(f"{r['snapshot']:<28} {r['state']:<8} {r['start'] or '':<26} {', '.join(r['indices'])}")
    if not rows:
        click.echo(f"no snapshots in {repository}")


@snapshot_group.command("restore")
@cluster_options
@_repo_options
@click.argument("snapshot")
@click.option("--index", "indices", multiple=True, help="Restore only this index or wildcard (repeatable) [default: all].")
@click.option("--rename-suffix", default=None,
              help="Restore each index as <name><suffix>, beside the existing one, without its aliases.")
@click.option("--no-aliases", is_flag=True, help="Do not restore the aliases saved with the indices.")
@words("json")
def snapshot_restore(cluster: ClusterConfig, repository: str, location: str | None, snapshot: str,
                     indices: tuple[str, ...], rename_suffix: str | None, no_aliases: bool, as_json: bool) -> None:
    """Restore SNAPSHOT's indices (with their aliases) and wait until they serve.

    To move an index to another cluster, give --location: the folder is registered read-only.
    """
    from lsr_os import snapshot as snap
    from lsr_os.engines import connect

    engine = connect(cluster)
    if location:
        snap.register_repository(engine, repository, location, readonly=True)
    result = snap.restore_snapshot(engine, repository, snapshot, indices, rename_suffix, not no_aliases)
    if as_json:
        echo_json(result)
        return
    for index, count in result["indices"].items():
        click.echo(f"restored {index}: {count} documents")


@snapshot_group.command("delete")
@cluster_options
@click.option("--repo", "repository", default="lsr-os", show_default=True, help="Snapshot repository name.")
@click.argument("snapshot")
def snapshot_delete(cluster: ClusterConfig, repository: str, snapshot: str) -> None:
    """Delete one snapshot from the repository."""
    from lsr_os import snapshot as snap
    from lsr_os.engines import connect

    snap.delete_snapshot(connect(cluster), repository, snapshot)
    click.echo(f"deleted {repository}/{snapshot}")


# --------------------------------------------------------------------------- training the sparse head


@main.command("train")
@click.option("--dense", "data", required=True,
              help="Dense files folder (img_embs.parquet, text_embs.parquet, dataset_meta.json) "
                   "or a Hugging Face dataset id when the hub is reachable.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: best/ checkpoint, metrics.jsonl, test_report.json.")
@click.option("--epochs", type=click.IntRange(1), default=200, show_default=True, help="Passes over the training pairs.")
@click.option("--batch-size", type=click.IntRange(2), default=512, show_default=True,
              help="Pairs per step (the in-batch negatives of the distillation loss).")
@click.option("--q-reg", type=float, default=1e-3, show_default=True, help="L1 weight on captions (queries).")
@click.option("--d-reg", type=float, default=1e-3, show_default=True, help="L1 weight on images (documents).")
@click.option("--temperature", type=float, default=1e-3, show_default=True, help="Teacher temperature τ (fixed).")
@click.option("--p", "fixed_p", type=click.FloatRange(0, 1), default=None,
              help="Fixed probability of no caption expansion (ablations: 0 or 1) [default: the paper's schedule].")
@click.option("--p-end", type=click.FloatRange(0, 1, min_open=True), default=0.95, show_default=True,
              help="Fraction of the epochs at which the schedule reaches p = 0.")
@click.option("--lr-head", type=float, default=5e-5, show_default=True, help="LR of LayerNorm and vocabulary projection.")
@click.option("--lr-proj", type=float, default=1e-3, show_default=True, help="LR of the dense -> hidden projection.")
@click.option("--warmup-ratio", type=float, default=0.2, show_default=True,
              help="Share of steps for LR warm-up and regulariser warm-up.")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="auto: bf16 (else fp16) on GPU, fp32 on CPU.")
@click.option("--init", default="auto", show_default=True,
              help="auto | minilm | a local masked-LM folder | a head checkpoint folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (the same seed, the same result).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--eval-batch-size", type=int, default=2048, show_default=True, help="Vectors per call in validation.")
@click.option("--max-text-length", type=int, default=512, show_default=True, help="Caption truncation (tokens).")
@click.option("--block-special-tokens/--keep-special-tokens", default=True, show_default=True,
              help="Keep the weights of [CLS], [SEP], [PAD], [UNK], [MASK] at zero (the published method keeps them).")
@click.option("--train-splits", default="train", show_default=True,
              help="Comma list of Karpathy split labels to train on: 'train' is the authors' set; "
                   "'train,restval' adds MSCOCO's restval (the 113k set).")
@click.option("--deterministic", is_flag=True,
              help="Deterministic kernels: two runs with the same seed, settings and machine give the same bits.")
@click.option("--query-weights", "query_weights", type=click.Choice(["joint", "after", "none"]), default="joint",
              show_default=True,
              help="Query weights for text queries without a model (inference-free): trained with the head "
                   "(joint), once it is done (after: its documents fixed), or not at all.")
@click.option("--query-reg", type=float, default=1e-4, show_default=True,
              help="FLOPs regulariser weight on the inference-free queries.")
@click.option("--lr-query", type=float, default=1e-2, show_default=True, help="LR of the query weights.")
@click.option("--query-epochs", type=click.IntRange(1), default=None,
              help="Passes of --query-weights after [default: --epochs].")
@click.option("--query-leak", type=click.FloatRange(0), default=0.1, show_default=True,
              help="--query-weights joint: slope of the query weights' gradient on image terms below zero, "
                   "so words that died on every image can come back (0: off).")
@click.option("--resume", is_flag=True, help="Continue from OUT/last_state.pt when it exists.")
def train_cmd(data, out, epochs, batch_size, q_reg, d_reg, temperature, fixed_p, p_end, lr_head, lr_proj,
              warmup_ratio, precision, init, seed, device, eval_batch_size, max_text_length, block_special_tokens,
              train_splits, deterministic, query_weights, query_reg, lr_query, query_epochs, query_leak,
              resume) -> None:
    """Train the sparse head with probabilistic expansion control (see the method page of the docs),
    and the query weights of the inference-free text queries."""
    from lsr_os.splits import split_labels
    from lsr_os.train import TrainConfig, train

    splits = split_labels(train_splits)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, q_reg=q_reg, d_reg=d_reg, temperature=temperature,
                      p=fixed_p, p_end_fraction=p_end, lr_head=lr_head, lr_proj=lr_proj, warmup_ratio=warmup_ratio,
                      precision=precision, seed=seed, device=device, init=init, eval_batch_size=eval_batch_size,
                      max_text_length=max_text_length, block_special_tokens=block_special_tokens,
                      train_splits=splits, deterministic=deterministic, query_weights=query_weights,
                      query_reg=query_reg, lr_query=lr_query, query_epochs=query_epochs, query_leak=query_leak)
    click.echo(f"training by {cfg.algorithm['summary']}")
    result = train(data, out, cfg, resume=resume)
    test, ts = result.test, result.train_set
    click.echo(f"trained on split {'+'.join(ts['train_splits'])}: {ts['train_images']:,} images, "
               f"{ts['train_pairs']:,} caption-image pairs")
    click.echo(f"best epoch {result.best_epoch} (val t2i R@1 {100 * result.best_val_r1:.2f}); "
               f"checkpoint {result.out / 'best'}; {result.epochs_run} epochs in {result.seconds:.0f}s")
    _print_test_rows(test)


def _print_test_rows(test: dict) -> None:
    """One line per query mode of a test report (train, add-query-weights)."""
    rows = {"sparse": test.get("sparse"), "sparse_no_query_expansion": test.get("sparse_no_query_expansion"),
            "inference_free": test.get("inference_free"),
            **{f"inference_free_{k}": v for k, v in test.get("inference_free_baselines", {}).items()},
            "dense": test.get("dense")}
    for name, row in rows.items():
        if row is None:
            continue
        cells = "  ".join(f"{d} " + " ".join(f"{k} {100 * v:.2f}" for k, v in row[d].items())
                          for d in ("t2i", "i2t") if d in row)
        extra = f"  FLOPs {row['flops']:.1f}  nnz q {row['nnz_query']:.1f} d {row['nnz_doc']:.1f}" if "flops" in row else ""
        click.echo(f"test {name}: {cells}{extra}")


@main.command("add-query-weights")
@click.option("--head", required=True, type=_PATH_DIR, help="The head checkpoint folder to give query weights.")
@click.option("--dense", "data", required=True, type=_PATH_DIR,
              help="Dense files folder the head was trained on (img_embs.parquet, text_embs.parquet, dataset_meta.json).")
@click.option("--method", type=click.Choice(["distillation", "idf", "mean-own-token"]), default="distillation",
              show_default=True,
              help="distillation: trained against the dense teacher, the head's documents fixed; idf and "
                   "mean-own-token: training-free baselines.")
@click.option("--epochs", type=click.IntRange(1), default=10, show_default=True, help="Passes over the training pairs.")
@click.option("--batch-size", type=click.IntRange(2), default=512, show_default=True, help="Pairs per step.")
@click.option("--query-reg", type=float, default=1e-4, show_default=True, help="FLOPs regulariser weight.")
@click.option("--lr-query", type=float, default=1e-2, show_default=True, help="Learning rate.")
@click.option("--train-splits", default="train", show_default=True, help="Comma list of split labels to train on.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
def add_query_weights_cmd(head: Path, data: Path, method: str, epochs: int, batch_size: int, query_reg: float,
                          lr_query: float, train_splits: str, seed: int, device: str) -> None:
    """Give an existing head query weights, so text queries need no model (inference-free).

    Heads trained by `lsr-os train` have them already (--query-weights joint, the default); this
    adds them to an older head, or one from the authors' format, without changing its documents.
    """
    from lsr_os.splits import split_labels
    from lsr_os.train import TrainConfig, add_query_weights

    splits = split_labels(train_splits)
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, query_reg=query_reg, lr_query=lr_query,
                      train_splits=splits, seed=seed, device=device, query_weights="after")
    result = add_query_weights(head, data, method, cfg)
    entry = result["query_weights"]
    click.echo(f"{head}: query weights ({entry['method']}) on {entry['nonzero']:,} of {entry['vocab_size']:,} terms")
    _print_test_rows(result["test"])


@main.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: the world in the authors' dense layout and ground_truth.json.")
@click.option("--num-images", "n_images", type=click.IntRange(4), default=400, show_default=True,
              help="Images in the world (train, val and test together).")
@click.option("--val", "n_val", type=click.IntRange(1), default=None, help="Validation images [default: an eighth].")
@click.option("--test", "n_test", type=click.IntRange(1), default=None, help="Test images [default: an eighth].")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed (the same seed, the same result).")
@click.option("--dim", type=int, default=256, show_default=True, help="Dimension of the dense vectors.")
@click.option("--noise", type=float, default=0.3, show_default=True, help="Norm of the noise added to image vectors.")
@click.option("--encoder", type=click.Choice(["minilm", "bag-of-words"]), default="minilm", show_default=True,
              help="How captions become dense vectors: the offline MiniLM model or a random bag of words.")
def synth_cmd(out, n_images, n_val, n_test, seed, dim, noise, encoder) -> None:
    """Write the synthetic world with known truth (authors' layout + ground_truth.json)."""
    from lsr_os.demo.synthetic import write_synthetic

    truth = write_synthetic(out, n_images=n_images, seed=seed, dim=dim, noise=noise, encoder=encoder,
                            n_val=n_val, n_test=n_test)
    click.echo(f"wrote {len(truth.image_concepts)} images over {len(truth.synonyms)} concepts to {out}")


# --------------------------------------------------------------------------- demo


@main.command("demo")
@cluster_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("lsr-os-demo"), show_default=True,
              help="Folder for every step's output; a re-run reuses finished steps.")
@click.option("--num-images", "n_images", type=click.IntRange(50), default=2000, show_default=True,
              help="Images in the built-in world (80% train, 10% val, 10% test).")
@click.option("--encoder-epochs", type=click.IntRange(1), default=40, show_default=True,
              help="Training epochs of the demo's dense encoder.")
@click.option("--head-epochs", type=click.IntRange(1), default=4, show_default=True,
              help="Training epochs of the sparse head.")
@click.option("--query", "queries", multiple=True, help="Example text query (repeatable) [default: five built-in ones].")
@click.option("-k", type=click.IntRange(1, 20), default=5, show_default=True, help="Hits per example query.")
@click.option("--prefix", default="demo", show_default=True, help="Collections are served as <prefix>-images and <prefix>-captions.")
@click.option("--no-node", is_flag=True, help="Never start a local node; fail when no cluster answers.")
@click.option("--engine", type=click.Choice(NODE_ENGINES), default=None,
              help="The engine to run on: without --url, its local node (OpenSearch 9200, Elasticsearch 9400), "
                   "started when none answers; with --url, a check that the cluster is that engine. "
                   "[default: whatever answers; a local OpenSearch node when none does]")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def demo(cluster: ClusterConfig, out: Path, n_images: int, encoder_epochs: int, head_epochs: int,
         queries: tuple[str, ...], k: int, prefix: str, no_node: bool, engine: str | None, as_json: bool) -> None:
    """Run the whole pipeline offline on a built-in image-caption world, end to end."""
    from lsr_os.demo.pipeline import DEFAULT_QUERIES, DemoConfig, run_demo

    from lsr_os.node import connect_or_start

    given = click.get_current_context().get_parameter_source("urls") is not click.core.ParameterSource.DEFAULT
    connected = connect_or_start(cluster, allow_start=not no_node, step=lambda message: click.echo(message, err=True),
                                 engine=engine, url_given=given)
    cfg = DemoConfig(out=out, n_images=n_images, encoder_epochs=encoder_epochs, head_epochs=head_epochs,
                     k=k, prefix=prefix, queries=queries or DEFAULT_QUERIES, progress=not as_json)
    result = run_demo(connected, cfg, step=lambda message: click.echo(message, err=True))
    if as_json:
        echo_json({"seconds": result.seconds, "report": result.report, "words": result.words,
                   "examples": [{"query": e.query, "query_terms": e.query_terms, "hits": e.hits,
                                 "inference_free_terms": e.inference_free_terms,
                                 "inference_free_hits": e.inference_free_hits,
                                 "sheet": str(e.sheet)} for e in result.examples]})
        return
    for ex in result.examples:
        click.secho(f"\n{ex.query}", bold=True)
        click.echo("  query terms: " + ", ".join(f"{t} {w:.2f}" for t, w in ex.query_terms))
        for h in ex.hits:
            click.echo(f"  {h['rank']:>2}. {h['score']:7.2f}  {h['image']:<26} matched: {', '.join(h['matched_terms'][:5])}")
        click.echo(f"  contact sheet: {ex.sheet}")
        if ex.inference_free_terms:
            click.echo("  without a model (inference-free): " + ", ".join(f"{t} {w:.2f}" for t, w in
                                                                        ex.inference_free_terms)
                       + f"; {ex.shared_hits} of its top {len(ex.inference_free_hits)} are above")
    click.secho("\nTest split, R@k in % (image-text sense):", bold=True)
    click.echo(" " * 42 + "".join(f"{m:>7}" for m in ("R@1", "R@5", "R@10")))
    for direction, label in (("t2i", "text -> image"), ("i2t", "image -> text")):
        sec = result.report[direction]
        for system, metrics in (("dense (teacher)", sec["dense"]["metrics"]),
                                (f"sparse via {connected.display_name}", sec["cluster"]["metrics"])):
            click.echo(f"  {label}, {system}".ljust(42) + "".join(f"{100 * metrics[m]:7.1f}" for m in ("R@1", "R@5", "R@10")))
        click.echo(f"    parity with exact scoring: top-10 overlap {sec['parity']['top10_overlap']:.3f}")
    click.echo()
    _print_query_modes(result.report)
    if result.words:
        click.echo("words the images hold (best caption word's R-precision per value, mean per family): "
                   + ", ".join(f"{family} {v['mean']:.2f}" for family, v in result.words.items()))
        if result.values_without_words:
            click.echo(f"  no image holds a word for: {', '.join(result.values_without_words)}")
    click.echo(f"\nreport: {result.report.get('out_dir')}/report.json; served as {prefix}-images, {prefix}-captions")
    click.echo("steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))
    click.echo(f"\nsearch it yourself:  lsr-os search \"two green stars\" --demo {out}")
    click.echo(f"without a model:     lsr-os search \"two green stars\" --demo {out} --mode inference-free")
    click.echo(f"serve it:            lsr-os serve --demo {out}    # then open http://127.0.0.1:8080/")
    click.echo(f"evaluate it:         lsr-os evaluate --dense {out / 'dense'} --demo {out}")
    click.echo(f"browse it:           import {out / 'dashboards.ndjson'} in OpenSearch Dashboards, or "
               f"{out / 'kibana.ndjson'} in Kibana (Saved objects)")


if __name__ == "__main__":
    main()
