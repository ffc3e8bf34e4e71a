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
    @click.option("--aws-region", envvar="OPENSEARCH_AWS_REGION", show_envvar=True,
                  help="Sign requests with AWS SigV4 for Amazon OpenSearch Service in this region (needs boto3).")
    @click.option("--aws-service", type=click.Choice(["es", "aoss"]), default="es", show_default=True,
                  help="SigV4 service: es (managed domain) or aoss (Serverless).")
    @functools.wraps(func)
    def wrapper(*args, urls, user, password, ca_certs, insecure, timeout, aws_region, aws_service, **kwargs):
        if user is not None and password is None:  # never on the command line, never echoed
            password = click.prompt(f"Password for {user}", hide_input=True, err=True)
        cluster = ClusterConfig(urls=split_urls(urls), user=user, password=password,
                                ca_certs=ca_certs, insecure=insecure, timeout=timeout,
                                aws_region=aws_region, aws_service=aws_service)
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
@click.option("--repo", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="The nodes' path.repo (snapshot folders live under it) [default: <state folder>/snapshots].")
def node_start(os_version: str | None, port: int, nodes: int, data: Path | None, heap: str, wait: float,
               repo: Path | None) -> None:
    """Provision (once, cached) and start a local node or cluster; harmless when it already runs.

    Nodes of the cluster that are stopped (e.g. with `node stop --node node-2`) are started
    again and rejoin with their data.
    """
    from lsr_os import node as node_lib

    spec = node_lib.NodeSpec(version=os_version or node_lib.DEFAULT_VERSION, port=port, data=data,
                             heap=heap, nodes=nodes, repo=repo)
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
@click.option("--node", "names", multiple=True, help="Stop only this node, e.g. node-2 (repeatable) [default: all].")
def node_stop(port: int, names: tuple[str, ...]) -> None:
    """Stop the local node(s) and wait until their processes are gone."""
    from lsr_os import node as node_lib

    stopped = node_lib.stop(port, list(names) or None)
    click.echo(f"stopped {len(stopped)} node(s) (pids {', '.join(map(str, stopped))})" if stopped
               else f"no node was running on port {port}")


@node.command("logs")
@click.option("--port", type=int, default=9200, show_default=True)
@click.option("-n", "--lines", type=int, default=50, show_default=True)
def node_logs(port: int, lines: int) -> None:
    """Print the last lines of the local node's log."""
    from lsr_os import node as node_lib

    click.echo(node_lib.logs(port, lines))


# --------------------------------------------------------------------------- serving: ingest, search, evaluate


@main.command("ingest")
@cluster_options
@click.option("--sparse", "sparse_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Sparse JSONL to load (one collection; give --collection).")
@click.option("--dense", "dense_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dense files folder (img_embs.parquet, text_embs.parquet, dataset_meta.json); needs --head.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Karpathy-split JSON to encode on the fly; needs --images, --model and --head.")
@click.option("--captions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Captions file (JSONL or CSV with image, caption[, split]) to encode on the fly; needs --model, --head.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Image root of --data or --captions [default for --captions: its folder].")
@click.option("--model", help="Dense encoder (name or folder, as for `lsr-os encode`) for --data or --captions.")
@click.option("--head", "head_path", type=click.Path(exists=True, path_type=Path), help="Sparse head checkpoint.")
@click.option("--collection", type=click.Choice(["images", "captions"]), multiple=True,
              help="Which collection(s); --sparse needs exactly one, the others default to both.")
@click.option("--split", "splits", multiple=True,
              help="Only these splits (with --dense or a dataset; repeatable) [default: all].")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True,
              help="With a dataset: images per model call.")
@click.option("--text-batch-size", type=click.IntRange(1), default=256, show_default=True,
              help="With a dataset: captions per model call.")
@click.option("--workers", type=click.IntRange(0), default=None,
              help="With a dataset: image-decoding processes [default: min(8, cores - 1)].")
@click.option("--device", default=None, help="With a dataset: cpu, cuda, ... [default: cuda when available].")
@click.option("--index", "alias", default=None, help="Alias to serve under [default: <prefix>-<collection>].")
@click.option("--prefix", default="lsr", show_default=True, help="Alias prefix: <prefix>-images, <prefix>-captions.")
@click.option("--fresh", is_flag=True, help="Do not resume an unfinished load: start a new index.")
@click.option("--keep-old", is_flag=True, help="Keep the replaced index instead of deleting it after the swap.")
@click.option("--chunk-docs", type=click.IntRange(1), default=500, show_default=True, help="Documents per bulk request.")
@click.option("--chunk-mb", type=click.FloatRange(0.01), default=10.0, show_default=True, help="Max MiB per bulk request.")
@click.option("--max-retries", type=click.IntRange(0), default=8, show_default=True,
              help="Re-sends of documents refused with 429/5xx (exponential backoff).")
@click.option("--prune-top-k", type=click.IntRange(1), default=None, help="Keep each document's k heaviest terms.")
@click.option("--threshold", type=float, default=0.0, show_default=True, help="Drop weights <= this.")
@click.option("--shards", type=click.IntRange(1), default=None, help="Primary shards of the new index [default: 1].")
@click.option("--replicas", type=click.IntRange(0), default=None,
              help="Replicas, kept during the load too [default: 1 on a cluster of 2+ data nodes, else 0].")
@click.option("--failures", "failures_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Failures file (JSONL) [default: ingest-failures-<alias>.jsonl].")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def ingest_cmd(cluster: ClusterConfig, sparse_file: Path | None, dense_dir: Path | None, data: Path | None,
               captions: Path | None, images: Path | None, model: str | None, head_path: Path | None,
               collection: tuple[str, ...], splits: tuple[str, ...], batch_size: int, text_batch_size: int,
               workers: int | None, device: str | None, alias: str | None, prefix: str, fresh: bool,
               keep_old: bool, chunk_docs: int, chunk_mb: float, max_retries: int, prune_top_k: int | None,
               threshold: float, shards: int | None, replicas: int | None, failures_path: Path | None,
               as_json: bool) -> None:
    """Load sparse vectors into a new versioned index and swap its alias when complete.

    Input: sparse JSONL, dense files plus a head, or a dataset encoded on the fly by a dense
    encoder and a head. An interrupted load resumes when re-run with the same input; ids are
    the records' ids. Skipped items are listed in the failures file.
    """
    import os

    from lsr_os import index as ix
    from lsr_os.config import connect

    inputs = ix.IngestInput(sparse_file=sparse_file, dense_dir=dense_dir, head=head_path, model=model, data=data,
                            images=images, captions=captions, splits=splits, batch_size=batch_size,
                            text_batch_size=text_batch_size, device=device,
                            workers=workers if workers is not None else min(8, max(0, (os.cpu_count() or 1) - 1)))
    collections = inputs.collections(collection, alias)
    reports = ix.ingest_inputs(connect(cluster), inputs, collections, alias=alias, prefix=prefix,
                               failures_path=failures_path, fresh=fresh, keep_old=keep_old, chunk_size=chunk_docs,
                               max_chunk_bytes=int(chunk_mb * 2**20), retry=ix.RetryPolicy(max_attempts=max_retries),
                               prune_top_k=prune_top_k, threshold=threshold, shards=shards, replicas=replicas)
    for report in reports:
        if as_json:
            echo_json(report.to_dict())
            continue
        click.echo(f"{report.alias} -> {report.index}: {report.count} documents ({report.sent} sent, "
                   f"{report.failed} failed, {report.docs_per_s:.0f} docs/s"
                   f"{f', resumed: {report.already_indexed} already there' if report.resumed else ''})")
        if report.failed:
            click.secho(f"  {report.failed} failures listed in {report.failures_file}", fg="yellow", err=True)
        if report.replaced:
            verb = "kept" if keep_old else "deleted"
            click.echo(f"  replaced {', '.join(report.replaced)} ({verb})")


@main.command("search")
@cluster_options
@click.argument("text", required=False)
@click.option("--image", "image_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Image -> text: search the captions with this image.")
@click.option("--vector-json", help="A raw query {term: weight}, inline or a file; needs no model.")
@click.option("--model", help="Dense encoder (name or folder) for text and image queries.")
@click.option("--head", "head_path", type=click.Path(exists=True, path_type=Path), help="Sparse head checkpoint.")
@click.option("--no-expansion", is_flag=True, help="Text queries keep only their own tokens.")
@click.option("--collection", type=click.Choice(["images", "captions"]), default=None,
              help="Collection to search [default: images for text, captions for --image].")
@click.option("--index", "index_name", default=None, help="Alias or index to search [default: <prefix>-<collection>].")
@click.option("--prefix", default="lsr", show_default=True)
@click.option("-k", "--top", "k", type=click.IntRange(1, 10000), default=10, show_default=True)
@click.option("--max-terms", type=click.IntRange(1), default=None,
              help="Keep the query's heaviest terms [default: the cluster's max clause count].")
@click.option("--split", default=None, help="Only documents of this split.")
@click.option("--explain", is_flag=True, help="Print the query DSL and each hit's matching terms.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def search_cmd(cluster: ClusterConfig, text: str | None, image_path: Path | None, vector_json: str | None,
               model: str | None, head_path: Path | None, no_expansion: bool, collection: str | None,
               index_name: str | None, prefix: str, k: int, max_terms: int | None, split: str | None,
               explain: bool, as_json: bool) -> None:
    """Search with a text, an image or a raw term-weight vector; prints rank, id, score, image or caption."""
    from lsr_os.search import run_search

    result = run_search(cluster, text=text, image=image_path, vector_json=vector_json, model=model, head=head_path,
                        expand=not no_expansion, collection=collection, index=index_name, prefix=prefix, k=k,
                        max_terms=max_terms, split=split, explain=explain)
    if as_json:
        echo_json(result.to_dict())
        return
    if explain:
        click.echo(f"# Dev Tools: GET {result.index}/_search")
        click.echo(json.dumps(result.dsl, indent=2, ensure_ascii=False))
    if not result.hits:
        click.echo(f"no document of {result.index} matches the {len(result.query)} query terms")
    for row in result.hits:
        label = row.get("caption") or row.get("image") or ""
        click.echo(f"{row['rank']:>3}  {row['id']:<20} {row['score']:10.4f}  {label}")
        for m in row.get("matches", [])[:20]:
            click.echo(f"       {m['term']:<20} {m['query_weight']:.4f} x {m['doc_weight']:.4f} = {m['contribution']:.4f}")


@main.command("evaluate")
@cluster_options
@click.option("--images", "images_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Sparse JSONL of the images (documents for text -> image, queries for image -> text).")
@click.option("--captions", "captions_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Sparse JSONL of the captions.")
@click.option("--meta", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="dataset_meta.json (splits, caption -> image); else records need split and image_id keys.")
@click.option("--dense", "dense_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Dense files folder: with --head, encode the split from it; always adds the dense teacher's figures.")
@click.option("--head", "head_path", type=click.Path(exists=True, path_type=Path), help="Sparse head checkpoint.")
@click.option("--split", default="test", show_default=True)
@click.option("--prefix", default="lsr", show_default=True)
@click.option("--images-index", default=None, help="[default: <prefix>-images]")
@click.option("--captions-index", default=None, help="[default: <prefix>-captions]")
@click.option("-k", "--depth", "k", type=click.IntRange(10), default=10, show_default=True, help="Hits per query.")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True, help="Queries per _msearch.")
@click.option("--max-terms", type=click.IntRange(1), default=None, help="Query term cap [default: max clause count].")
@click.option("--prune-top-k", type=click.IntRange(1), default=None,
              help="The document pruning the ingest used (--prune-top-k there), applied in memory too.")
@click.option("--threshold", type=float, default=0.0, show_default=True, help="The ingest's --threshold, likewise.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("eval"),
              show_default=True, help="Folder for TREC runs and report.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the whole report as JSON.")
def evaluate_cmd(cluster: ClusterConfig, images_file: Path | None, captions_file: Path | None, meta: Path | None,
                 dense_dir: Path | None, head_path: Path | None, split: str, prefix: str, images_index: str | None,
                 captions_index: str | None, k: int, batch_size: int, max_terms: int | None,
                 prune_top_k: int | None, threshold: float, out_dir: Path, as_json: bool) -> None:
    """Both directions of a split through the cluster, with exact in-memory scoring beside it."""
    from lsr_os import evaluate as ev
    from lsr_os.config import connect
    from lsr_os.errors import ConfigError

    if head_path is not None and dense_dir is not None:
        data = ev.encode_split(dense_dir, head_path, split)
    elif images_file is not None and captions_file is not None:
        data = ev.load_split(images_file, captions_file, meta, split)
    else:
        raise ConfigError("give --images and --captions (sparse JSONL), or --dense DIR with --head")
    data = data.pruned(prune_top_k, threshold)
    client = connect(cluster)
    report = ev.evaluate(client, images_index or f"{prefix}-images", captions_index or f"{prefix}-captions", data,
                         split, k, batch_size, max_terms, out_dir, dense_dir)
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
        click.echo(f"  parity   top-{k} overlap {p[f'top{k}_overlap']:.4f}, Kendall tau {p['kendall_tau']:.4f}")
        click.echo(f"  latency  cluster mean {lat['mean_ms']:.1f} ms, p50 {lat['p50_ms']:.1f}, p99 {lat['p99_ms']:.1f}"
                   f" (server took); exact p50 {sec['exact']['latency']['p50_ms']:.2f} ms")
    click.echo(f"runs and report.json in {out_dir}")


@main.group("collections")
def collections_group() -> None:
    """List or delete the collections lsr-os has built."""


@collections_group.command("list")
@cluster_options
@click.option("--json", "as_json", is_flag=True)
def collections_list(cluster: ClusterConfig, as_json: bool) -> None:
    """Every lsr-os index: alias, state, documents, size, served or not."""
    from lsr_os.config import connect
    from lsr_os.index import list_collections

    rows = list_collections(connect(cluster))
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        mark = "*" if r["served"] else " "
        click.echo(f"{mark} {r['alias']:<24} {r['index']:<44} {r['state']:<9} {r['docs']:>10} docs "
                   f"{r['bytes'] / 2**20:8.1f} MiB")
    if not rows:
        click.echo("no lsr-os collections")


@collections_group.command("delete")
@cluster_options
@click.argument("alias")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def collections_delete(cluster: ClusterConfig, alias: str, yes: bool) -> None:
    """Delete a collection: its alias and every index version built for it."""
    from lsr_os.config import connect
    from lsr_os.index import delete_collection

    client = connect(cluster)
    if not yes:
        click.confirm(f"delete {alias} and all its index versions?", abort=True)
    for name in delete_collection(client, alias):
        click.echo(f"deleted {name}")


# --------------------------------------------------------------------------- encoding datasets


@main.command("encode")
@click.option("--model", required=True,
              help="Dense encoder: Salesforce/blip-itm-{base,large}-{coco,flickr}, a local BLIP folder, an ALBEF "
                   ".pth checkpoint, a folder saved by lsr-os, or KIND:SOURCE.")
@click.option("--data", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Karpathy-split JSON (MSCOCO, Flickr30k); needs --images.")
@click.option("--images", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Image root; image paths must stay inside it [default for --captions: its folder].")
@click.option("--captions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Captions file, JSONL or CSV with image, caption[, split].")
@click.option("--split", default="all", show_default=True, help="Split(s), comma-separated; 'train' includes restval.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--head", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Sparse head checkpoint: write sparse JSONL through it instead of dense parquet.")
@click.option("--expand-captions/--no-expand-captions", default=True, show_default=True,
              help="With --head: expand captions, or keep only their own tokens.")
@click.option("--top-k", type=int, default=None, help="With --head: keep the k heaviest terms per vector.")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per model call.")
@click.option("--text-batch-size", type=int, default=256, show_default=True, help="Captions per model call.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... [default: cuda when available].")
@click.option("--dtype", default=None, help="float32, bfloat16, float16 [default: bfloat16 on GPU, float32 on CPU].")
@click.option("--workers", type=int, default=None, help="Image-decoding processes [default: min(8, cores - 1)].")
@click.option("--shard", default=None, help="I/N: encode shard I of N (several machines, one output folder).")
@click.option("--part-size", type=int, default=8192, show_default=True,
              help="Vectors per parquet part (the most an interruption loses).")
@click.option("--only", type=click.Choice(["images", "captions"]), default=None, help="Encode one side only.")
@click.option("--max-batches", type=int, default=None, help="Stop after this many batches per side (a trial run).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def encode_cmd(model: str, data: Path | None, images: Path | None, captions: Path | None, split: str, out: Path,
               head: Path | None, expand_captions: bool, top_k: int | None, batch_size: int, text_batch_size: int,
               device: str | None, dtype: str | None, workers: int | None, shard: str | None, part_size: int,
               only: str | None, max_batches: int | None, as_json: bool) -> None:
    """Encode a dataset's images and captions to dense parquet (the authors' layout) or sparse JSONL.

    Resumes by default (ids already in OUT are skipped). Bad items are skipped and listed in
    OUT/failures*.jsonl; the exit status is 4 when any item failed.
    """
    import os

    from lsr_os import data as data_lib
    from lsr_os.encode import EXIT_FAILURES, EncodeOptions, encode_dataset
    from lsr_os.models.dense import load_encoder

    opts = EncodeOptions(batch_size=batch_size, text_batch_size=text_batch_size,
                         workers=workers if workers is not None else min(8, max(0, (os.cpu_count() or 1) - 1)),
                         shard=data_lib.parse_shard(shard), part_size=part_size, images=only != "captions",
                         captions=only != "images", max_batches=max_batches, expand_captions=expand_captions,
                         top_k=top_k)
    dataset = data_lib.load_dataset(data=data, images=images, captions=captions, split=split)
    encoder = load_encoder(model, device=device, dtype=dtype)
    head_model = None
    if head is not None:
        from lsr_os.models.head import load_head

        head_model = load_head(head)
    report = encode_dataset(encoder, dataset, out, opts, head=head_model, head_name=str(head) if head else None)
    if as_json:
        echo_json({**report.to_dict(), "encoder": encoder.describe()})
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
@click.option("--json", "as_json", is_flag=True)
def snapshot_create(cluster: ClusterConfig, repository: str, location: str | None, indices: tuple[str, ...],
                    snapshot: str | None, as_json: bool) -> None:
    """Snapshot INDICES (indices, aliases or wildcards) [default: every complete lsr-os collection]."""
    from lsr_os import snapshot as snap
    from lsr_os.config import connect
    from lsr_os.errors import ClusterError

    snapshot = snap.check_name(snapshot or snap.default_snapshot_name())  # before any request
    client = connect(cluster)
    if location:
        snap.register_repository(client, repository, location)
    if not indices:
        from lsr_os.index import list_collections

        indices = tuple(r["index"] for r in list_collections(client) if r["state"] == "complete")
        if not indices:
            raise ClusterError("no complete lsr-os collection to snapshot; name the indices or aliases")
    result = snap.create_snapshot(client, repository, snapshot, indices)
    if as_json:
        echo_json(result)
    else:
        click.echo(f"snapshot {repository}/{result['snapshot']}: {result['state']}, "
                   f"{result['shards'].get('successful', 0)} shard(s) of {', '.join(result['indices'])}")


@snapshot_group.command("list")
@cluster_options
@_repo_options
@click.option("--json", "as_json", is_flag=True)
def snapshot_list(cluster: ClusterConfig, repository: str, location: str | None, as_json: bool) -> None:
    """The repository's snapshots, oldest first."""
    from lsr_os import snapshot as snap
    from lsr_os.config import connect

    client = connect(cluster)
    if location:
        snap.register_repository(client, repository, location, readonly=True)
    rows = snap.list_snapshots(client, repository)
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
@click.option("--json", "as_json", is_flag=True)
def snapshot_restore(cluster: ClusterConfig, repository: str, location: str | None, snapshot: str,
                     indices: tuple[str, ...], rename_suffix: str | None, no_aliases: bool, as_json: bool) -> None:
    """Restore SNAPSHOT's indices (with their aliases) and wait until they serve.

    To move an index to another cluster, give --location: the folder is registered read-only.
    """
    from lsr_os import snapshot as snap
    from lsr_os.config import connect

    client = connect(cluster)
    if location:
        snap.register_repository(client, repository, location, readonly=True)
    result = snap.restore_snapshot(client, repository, snapshot, indices, rename_suffix, not no_aliases)
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
    from lsr_os.config import connect

    snap.delete_snapshot(connect(cluster), repository, snapshot)
    click.echo(f"deleted {repository}/{snapshot}")


# --------------------------------------------------------------------------- training the sparse head


@main.command("train")
@click.option("--data", required=True, help="Dataset folder (img_embs.parquet, text_embs.parquet, dataset_meta.json) "
              "or a Hugging Face dataset id when the hub is reachable.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: best/ checkpoint, metrics.jsonl, test_report.json.")
@click.option("--epochs", type=int, default=200, show_default=True)
@click.option("--batch-size", type=int, default=512, show_default=True)
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
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ...")
@click.option("--eval-batch-size", type=int, default=2048, show_default=True)
@click.option("--max-text-length", type=int, default=512, show_default=True, help="Caption truncation (tokens).")
@click.option("--block-special-tokens/--keep-special-tokens", default=True, show_default=True,
              help="Keep the weights of [CLS], [SEP], [PAD], [UNK], [MASK] at zero (METHOD.md keeps them).")
@click.option("--train-splits", default="train", show_default=True,
              help="Comma list of Karpathy split labels to train on: 'train' is the authors' set; "
                   "'train,restval' adds MSCOCO's restval (the 113k set).")
@click.option("--deterministic", is_flag=True,
              help="Deterministic kernels: two runs with the same seed, settings and machine give the same bits.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last_state.pt when it exists.")
def train_cmd(data, out, epochs, batch_size, q_reg, d_reg, temperature, fixed_p, p_end, lr_head, lr_proj,
              warmup_ratio, precision, init, seed, device, eval_batch_size, max_text_length, block_special_tokens,
              train_splits, deterministic, resume) -> None:
    """Train the sparse head with probabilistic expansion control (METHOD.md)."""
    from lsr_os.train import TrainConfig, train

    splits = tuple(dict.fromkeys(s.strip() for s in train_splits.split(",") if s.strip()))
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, q_reg=q_reg, d_reg=d_reg, temperature=temperature,
                      p=fixed_p, p_end_fraction=p_end, lr_head=lr_head, lr_proj=lr_proj, warmup_ratio=warmup_ratio,
                      precision=precision, seed=seed, device=device, init=init, eval_batch_size=eval_batch_size,
                      max_text_length=max_text_length, block_special_tokens=block_special_tokens,
                      train_splits=splits, deterministic=deterministic)
    result = train(data, out, cfg, resume=resume)
    test, ts = result.test, result.train_set
    click.echo(f"trained on split {'+'.join(ts['train_splits'])}: {ts['train_images']:,} images, "
               f"{ts['train_pairs']:,} caption-image pairs")
    click.echo(f"best epoch {result.best_epoch} (val t2i R@1 {100 * result.best_val_r1:.2f}); "
               f"checkpoint {result.out / 'best'}; {result.epochs_run} epochs in {result.seconds:.0f}s")
    for name in ("sparse", "sparse_no_query_expansion", "dense"):
        row = test[name]
        cells = "  ".join(f"{d} " + " ".join(f"{k} {100 * v:.2f}" for k, v in row[d].items()) for d in ("t2i", "i2t"))
        extra = f"  FLOPs {row['flops']:.1f}  nnz q {row['nnz_query']:.1f} d {row['nnz_doc']:.1f}" if "flops" in row else ""
        click.echo(f"test {name}: {cells}{extra}")


@main.command("sparsify")
@click.option("--model", "model_path", required=True, type=click.Path(exists=True, file_okay=False),
              help="Head checkpoint folder (own or the authors' d2s format).")
@click.option("--dense", required=True, type=click.Path(exists=True, path_type=Path),
              help="Dataset folder (authors' layout) or one parquet file of dense vectors.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Sparse JSONL to write.")
@click.option("--kind", type=click.Choice(["images", "captions"]), default="images", show_default=True)
@click.option("--no-expansion", is_flag=True, help="Captions keep only their own tokens (text from dataset_meta.json).")
@click.option("--split", default=None, help="Only this split of dataset_meta.json (train includes restval).")
@click.option("--top-k", type=int, default=None, help="Keep the k heaviest terms of each vector.")
@click.option("--batch-size", type=int, default=1024, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--resume", is_flag=True, help="Append, skipping ids already in OUT.")
def sparsify_cmd(model_path, dense, out, kind, no_expansion, split, top_k, batch_size, device, resume) -> None:
    """Turn dense vectors into sparse JSONL with a trained head."""
    from lsr_os.models.head import load_head
    from lsr_os.sparsify import sparsify

    report = sparsify(load_head(model_path), dense, out, kind=kind, expand=not no_expansion, top_k=top_k,
                      batch_size=batch_size, split=split, resume=resume, device=device)
    click.echo(f"wrote {report.written} {kind} to {report.out}"
               + (f"; {report.skipped_existing} already there" if report.skipped_existing else "")
               + (f"; {report.empty} with no terms" if report.empty else ""))


@main.command("synth")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path))
@click.option("--images", "n_images", type=int, default=400, show_default=True)
@click.option("--val", "n_val", type=click.IntRange(1), default=None, help="Validation images [default: an eighth].")
@click.option("--test", "n_test", type=click.IntRange(1), default=None, help="Test images [default: an eighth].")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dim", type=int, default=256, show_default=True)
@click.option("--noise", type=float, default=0.3, show_default=True, help="Norm of the noise added to image vectors.")
@click.option("--encoder", type=click.Choice(["minilm", "bag-of-words"]), default="minilm", show_default=True)
def synth_cmd(out, n_images, n_val, n_test, seed, dim, noise, encoder) -> None:
    """Write the synthetic world with known truth (authors' layout + ground_truth.json)."""
    from lsr_os.synthetic import write_synthetic

    truth = write_synthetic(out, n_images=n_images, seed=seed, dim=dim, noise=noise, encoder=encoder,
                            n_val=n_val, n_test=n_test)
    click.echo(f"wrote {len(truth.image_concepts)} images over {len(truth.synonyms)} concepts to {out}")


# --------------------------------------------------------------------------- demo


@main.command("demo")
@cluster_options
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("lsr-os-demo"), show_default=True,
              help="Folder for every step's output; a re-run reuses finished steps.")
@click.option("--images", "n_images", type=click.IntRange(50), default=2000, show_default=True,
              help="Images in the built-in world (80% train, 10% val, 10% test).")
@click.option("--encoder-epochs", type=click.IntRange(1), default=40, show_default=True)
@click.option("--head-epochs", type=click.IntRange(1), default=4, show_default=True)
@click.option("--query", "queries", multiple=True, help="Example text query (repeatable) [default: five built-in ones].")
@click.option("-k", type=click.IntRange(1, 20), default=5, show_default=True, help="Hits per example query.")
@click.option("--prefix", default="demo", show_default=True, help="Collections are served as <prefix>-images and <prefix>-captions.")
@click.option("--no-node", is_flag=True, help="Never start a local node; fail when no cluster answers.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def demo(cluster: ClusterConfig, out: Path, n_images: int, encoder_epochs: int, head_epochs: int,
         queries: tuple[str, ...], k: int, prefix: str, no_node: bool, as_json: bool) -> None:
    """Run the whole pipeline offline on a built-in image-caption world, end to end."""
    from lsr_os.demo import DEFAULT_QUERIES, DemoConfig, run_demo

    client = _client_or_local_node(cluster, allow_start=not no_node)
    cfg = DemoConfig(out=out, n_images=n_images, encoder_epochs=encoder_epochs, head_epochs=head_epochs,
                     k=k, prefix=prefix, queries=queries or DEFAULT_QUERIES, progress=not as_json)
    result = run_demo(client, cfg)
    if as_json:
        echo_json({"seconds": result.seconds, "report": result.report,
                   "examples": [{"query": e.query, "query_terms": e.query_terms, "hits": e.hits,
                                 "sheet": str(e.sheet)} for e in result.examples]})
        return
    for ex in result.examples:
        click.secho(f"\n{ex.query}", bold=True)
        click.echo("  query terms: " + ", ".join(f"{t} {w:.2f}" for t, w in ex.query_terms))
        for h in ex.hits:
            click.echo(f"  {h['rank']:>2}. {h['score']:7.2f}  {h['image']:<20} matched: {', '.join(h['matched_terms'][:5])}")
        click.echo(f"  contact sheet: {ex.sheet}")
    click.secho("\nTest split, R@k in % (image-text sense):", bold=True)
    click.echo(" " * 38 + "".join(f"{m:>7}" for m in ("R@1", "R@5", "R@10")))
    for direction, label in (("t2i", "text -> image"), ("i2t", "image -> text")):
        sec = result.report[direction]
        for system, metrics in (("dense (teacher)", sec["dense"]["metrics"]),
                                ("sparse via OpenSearch", sec["cluster"]["metrics"])):
            click.echo(f"  {label}, {system}".ljust(38) + "".join(f"{100 * metrics[m]:7.1f}" for m in ("R@1", "R@5", "R@10")))
        click.echo(f"    parity with exact scoring: top-10 overlap {sec['parity']['top10_overlap']:.3f}")
    click.echo(f"\nreport: {result.report.get('out_dir')}/report.json; served as {prefix}-images, {prefix}-captions")
    click.echo("steps (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.seconds.items()))


def _client_or_local_node(cluster: ClusterConfig, allow_start: bool):
    """A client to the configured cluster; with the default URL and none answering, a local node."""
    from lsr_os import node as node_lib
    from lsr_os.config import DEFAULT_URL, connect
    from lsr_os.errors import ClusterUnreachable

    try:
        return connect(cluster)
    except ClusterUnreachable:
        if not allow_start or cluster.urls != (DEFAULT_URL,):
            raise
    click.echo("no cluster at the default URL: starting a local node (lsr-os node start)", err=True)
    node_lib.start(node_lib.NodeSpec())
    return connect(cluster)


if __name__ == "__main__":
    main()
