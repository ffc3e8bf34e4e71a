"""Local OpenSearch nodes without Docker, from the official artifacts on Maven Central.

OpenSearch's build publishes its integration-test distribution to Maven Central
(`org.opensearch.distribution.integ-test-zip:opensearch:<v>:zip`). We fetch it with `mvn`
(so a site's Maven mirror settings apply; straight HTTPS when Maven is absent), unpack it once
into a cache, make sure the `mapper-extras` module (it provides `rank_features`) is there, and
run one or more nodes on 127.0.0.1, each with its own config, data and log folders.

The lsr-os plugin (`plugin/`, shipped as package data) is built once per source and OpenSearch
version with Maven and installed into a copy of the distribution, so nodes can start with it or,
from the untouched distribution, without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Literal

from lsr_os.errors import NodeError, PluginUnavailable

log = logging.getLogger(__name__)

# The one place that names the default OpenSearch version (docker-compose's .env must agree;
# a test checks it). 3.8.0 is the newest 3.x whose integration archive Maven Central serves.
DEFAULT_VERSION = "3.8.0"

MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
DISTRIBUTION = ("org.opensearch.distribution.integ-test-zip", "opensearch", "zip")
MAPPER_EXTRAS = ("org.opensearch.plugin", "mapper-extras-client", "jar")
JVM_ROOT = Path("/usr/lib/jvm")
# An unprivileged uid to run as when we are root: OpenSearch refuses to run as root.
_UNPRIVILEGED_ID = "1000"
# The plugin: its name (also its folder under plugins/), and the package that ships its Maven
# sources (a core module and one module per engine, each building that engine's zip).
PLUGIN = "lsr-os"
PLUGIN_SOURCES = "lsr_os.plugin_sources"
# Engine -> (its name for people, the oldest major version the plugin builds for). The engine is
# also the Maven module that builds its zip and the prefix of its version property.
PLUGIN_ENGINES = {"opensearch": ("OpenSearch", 3), "elasticsearch": ("Elasticsearch", 9)}
# A first build downloads up to 90 MB of jars; one that takes longer than this has hung (on the network).
PLUGIN_BUILD_TIMEOUT_S = 1800
# auto: install it when it can be built, else start without it and say so in one line;
# require: fail instead; skip: never (the nodes run the untouched distribution).
PluginMode = Literal["auto", "require", "skip"]


def home() -> Path:
    """Where artifacts, distributions and node state live (LSR_OS_HOME overrides)."""
    return Path(os.environ.get("LSR_OS_HOME") or Path.home() / ".cache" / "lsr-os")


@dataclass
class NodeSpec:
    """What to run: a cluster of `nodes` local nodes whose first HTTP port is `port`."""

    version: str = DEFAULT_VERSION
    port: int = 9200
    data: Path | None = None
    heap: str = "1g"
    nodes: int = 1
    cluster_name: str = "lsr-os"
    # Snapshot repositories must lie inside path.repo; another cluster's folder here lets this
    # one restore that cluster's snapshots (default: <cluster dir>/snapshots).
    repo: Path | None = None
    plugin: PluginMode = "auto"

    def __post_init__(self) -> None:
        if self.plugin not in ("auto", "require", "skip"):
            raise NodeError(f"plugin mode {self.plugin!r} is not one of auto, require, skip")
        if not re.fullmatch(r"\d+\.\d+\.\d+", self.version):
            raise NodeError(f"OpenSearch version {self.version!r} is not of the form X.Y.Z")
        if not re.fullmatch(r"\d+[mg]", self.heap):
            raise NodeError(f"heap {self.heap!r} must look like 512m or 2g")
        if self.nodes < 1:
            raise NodeError("a cluster needs at least one node")

    def http_port(self, i: int) -> int:
        return self.port + i

    def transport_port(self, i: int) -> int:
        return self.port + 100 + i


@dataclass
class NodeState:
    """One started node, as recorded in its state folder."""

    name: str
    pid: int
    version: str
    url: str
    http_port: int
    transport_port: int
    log_file: str
    data: str
    already_running: bool = field(default=False, compare=False)
    plugin: str | None = None  # the lsr-os plugin build it runs with (version-sourcehash), None without


def cluster_dir(port: int) -> Path:
    return home() / "clusters" / str(port)


# ----------------------------------------------------------------------------- provisioning


Step = Callable[[str], None]  # told each step of a long start ("fetching ...", "waiting ..."), for a progress line


def _quiet(message: str) -> None:
    log.info(message)


def fetch_artifact(group: str, artifact: str, ext: str, version: str, step: Step = _quiet) -> Path:
    """Fetch one artifact into the download cache and return its path."""
    dest_dir = home() / "downloads"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{artifact}-{version}.{ext}"
    if dest.exists():
        return dest
    coords = f"{group}:{artifact}:{version}:{ext}"
    mvn = shutil.which("mvn")
    if mvn:
        step(f"fetching {coords} with Maven (once; about 100 MB)")
        proc = subprocess.run(
            [mvn, "-B", "-q", "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy",
             f"-Dartifact={coords}", f"-DoutputDirectory={dest_dir}"],
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0 or not dest.exists():
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
            raise NodeError(f"Maven could not fetch {coords}:\n{tail}")
        return dest
    url = f"{MAVEN_CENTRAL}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.{ext}"
    step(f"downloading {url} (once; about 100 MB)")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, tempfile.NamedTemporaryFile(dir=dest_dir, delete=False) as tmp:
            shutil.copyfileobj(resp, tmp)
        with urllib.request.urlopen(url + ".sha1", timeout=60) as resp:
            expected = resp.read().decode().split()[0]
    except urllib.error.HTTPError as exc:
        raise NodeError(f"{coords} is not on Maven Central ({url}: HTTP {exc.code})") from exc
    except urllib.error.URLError as exc:
        raise NodeError(f"cannot reach Maven Central for {coords}: {exc.reason}") from exc
    digest = hashlib.sha1(Path(tmp.name).read_bytes()).hexdigest()
    if digest != expected:
        os.unlink(tmp.name)
        raise NodeError(f"checksum mismatch for {url}")
    os.replace(tmp.name, dest)
    return dest


def provision(version: str, step: Step = _quiet) -> Path:
    """Return an unpacked OpenSearch distribution of `version` that has rank_features."""
    dist = home() / "dist" / f"opensearch-{version}"
    if (dist / "bin" / "opensearch").exists() and (dist / "modules" / "mapper-extras").is_dir():
        return dist
    archive = fetch_artifact(*DISTRIBUTION, version, step=step)
    step(f"unpacking {archive.name} into {dist}")
    dist.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dist.parent))
    try:
        _unzip(archive, staging)
        (top,) = [p for p in staging.iterdir() if p.is_dir()]
        modules = top / "modules" / "mapper-extras"
        if not modules.is_dir():
            _add_mapper_extras(modules, version)
        shutil.rmtree(dist, ignore_errors=True)
        os.replace(top, dist)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("OpenSearch %s unpacked in %s", version, dist)
    return dist


def _unzip(archive: Path, dest: Path) -> None:
    """Unzip keeping the executable bits (zipfile alone drops them)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = zf.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)


def _add_mapper_extras(module_dir: Path, version: str) -> None:
    """Lay out the mapper-extras jar from Maven Central as a module with its descriptor."""
    jar = fetch_artifact(*MAPPER_EXTRAS, version)
    module_dir.mkdir(parents=True)
    shutil.copy2(jar, module_dir / jar.name)
    java_version = "21" if int(version.split(".")[0]) >= 3 else "11"
    (module_dir / "plugin-descriptor.properties").write_text(
        "description=Adds advanced field mappers\n"
        f"version={version}\nname=mapper-extras\n"
        "classname=org.opensearch.index.mapper.MapperExtrasModulePlugin\n"
        f"java.version={java_version}\nopensearch.version={version}\n"
        "custom.foldername=\nextended.plugins=\nhas.native.controller=false\n"
    )
    log.info("added the mapper-extras module from %s", jar.name)


# ----------------------------------------------------------------------------- Java


def java_major(java_home: Path) -> int | None:
    """The major version of a JDK, read from its `release` file."""
    try:
        text = (java_home / "release").read_text()
    except OSError:
        return None
    m = re.search(r'JAVA_VERSION="(\d+)(?:\.(\d+))?', text)
    if not m:
        return None
    major = int(m.group(1))
    return int(m.group(2)) if major == 1 and m.group(2) else major


def find_java(version: str) -> Path:
    """A JDK the OpenSearch version can run on: JAVA_HOME if new enough, else the newest under /usr/lib/jvm."""
    needed = 21 if int(version.split(".")[0]) >= 3 else 11
    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]))
    if JVM_ROOT.is_dir():
        candidates += sorted(JVM_ROOT.iterdir(), key=lambda p: java_major(p) or 0, reverse=True)
    for cand in candidates:
        major = java_major(cand)
        if major and major >= needed and (cand / "bin" / "java").exists():
            return cand
    seen = ", ".join(f"{c} ({java_major(c) or '?'})" for c in candidates) or "none"
    raise NodeError(f"OpenSearch {version} needs Java {needed} or newer; JDKs found: {seen}. "
                    "Install one or set JAVA_HOME.")


# ----------------------------------------------------------------------------- the lsr-os plugin


@contextlib.contextmanager
def _plugin_lock() -> Iterator[None]:
    """One build or install at a time on this machine (two `node start`s may race)."""
    folder = home() / "plugins"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _plugin_files() -> list[tuple[str, bytes]]:
    """What the plugin's build reads, as (relative path, bytes), sorted: the parent pom.xml and
    assembly.xml, and each module's pom.xml and src/main."""
    root = resources.files(PLUGIN_SOURCES)
    out = [(name, root.joinpath(name).read_bytes()) for name in ("pom.xml", "assembly.xml")]
    todo = []
    for module in root.iterdir():
        if module.is_dir() and module.joinpath("pom.xml").is_file():
            out.append((f"{module.name}/pom.xml", module.joinpath("pom.xml").read_bytes()))
            todo.append((f"{module.name}/src/main", module.joinpath("src").joinpath("main")))
    while todo:
        rel, folder = todo.pop()
        for entry in folder.iterdir():
            if entry.is_dir():
                todo.append((f"{rel}/{entry.name}", entry))
            elif entry.is_file():
                out.append((f"{rel}/{entry.name}", entry.read_bytes()))
    return sorted(out)


def plugin_build_key(version: str, engine: str = "opensearch") -> str:
    """Names one build: the engine, its version and a hash of the plugin's sources."""
    digest = hashlib.sha256()
    for rel, data in _plugin_files():
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).digest())
    return f"{engine}-{version}-{digest.hexdigest()[:12]}"


def build_plugin(version: str, java: Path, step: Step = _quiet, engine: str = "opensearch") -> Path:
    """The plugin's zip for `engine` (opensearch or elasticsearch) at exactly `version`, built with
    Maven once per source, engine and version (cached under the lsr-os home, like the
    distribution); raises PluginUnavailable."""
    if engine not in PLUGIN_ENGINES:
        raise PluginUnavailable(f"the lsr-os plugin is built for {' or '.join(PLUGIN_ENGINES)}, not {engine!r}")
    name, oldest = PLUGIN_ENGINES[engine]
    if int(version.split(".")[0]) < oldest:
        raise PluginUnavailable(f"the lsr-os plugin is built for {name} {oldest}.x, not {version}")
    key = plugin_build_key(version, engine)
    cached = home() / "plugins" / key
    zips = sorted(cached.glob(f"{PLUGIN}-*.zip"))
    if zips:
        return zips[0]
    mvn = shutil.which("mvn")
    if not mvn:
        raise PluginUnavailable("Maven (mvn) is not installed, and building the lsr-os plugin needs it")
    with _plugin_lock():
        zips = sorted(cached.glob(f"{PLUGIN}-*.zip"))
        if zips:  # another start built it while this one waited
            return zips[0]
        build = Path(tempfile.mkdtemp(dir=home() / "plugins", prefix="build-"))
        try:
            for rel, data in _plugin_files():
                (build / rel).parent.mkdir(parents=True, exist_ok=True)
                (build / rel).write_bytes(data)
            step(f"building the lsr-os plugin for {name} {version} with Maven (once per plugin source; "
                 "the first build downloads up to 90 MB of jars)")
            started = time.monotonic()
            # only the engine's module and the core; no test is compiled, so no test framework is fetched
            command = [mvn, "-B", "-q", "-pl", engine, "-am", "-Dmaven.test.skip=true", f"-D{engine}.version={version}",
                       "package"]
            try:
                proc = subprocess.run(command, cwd=build, env={**os.environ, "JAVA_HOME": str(java)},
                                      capture_output=True, text=True, check=False, timeout=PLUGIN_BUILD_TIMEOUT_S)
            except subprocess.TimeoutExpired as exc:
                raise PluginUnavailable(f"Maven did not build the lsr-os plugin within {exc.timeout:.0f} s "
                                        "(is Maven Central reachable?)") from exc
            except OSError as exc:
                raise PluginUnavailable(f"could not run Maven ({mvn}) to build the lsr-os plugin: {exc}") from exc
            built = sorted((build / engine / "target").glob(f"{PLUGIN}-*.zip"))
            if proc.returncode != 0 or not built:
                raise PluginUnavailable(f"Maven could not build the lsr-os plugin for {name} {version}: "
                                        f"{_maven_error(proc.stdout + proc.stderr)}")
            cached.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built[0], cached / (built[0].name + ".tmp"))
            os.replace(cached / (built[0].name + ".tmp"), cached / built[0].name)
            log.info("built %s in %.1f s", cached / built[0].name, time.monotonic() - started)
            return cached / built[0].name
        finally:
            shutil.rmtree(build, ignore_errors=True)


def _maven_error(output: str) -> str:
    """The line of Maven's output that says what failed (its first [ERROR] line, else the last line)."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and "sun.misc.Unsafe" not in ln]
    errors = [ln for ln in lines if ln.startswith("[ERROR]")]
    return (errors or lines or ["no output"])[0]


def plugin_descriptor(zip_path: Path) -> dict[str, str]:
    """The plugin-descriptor.properties of a plugin zip."""
    try:
        with zipfile.ZipFile(zip_path) as zf:
            text = zf.read("plugin-descriptor.properties").decode("utf-8")
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise PluginUnavailable(f"{zip_path} is not an OpenSearch plugin zip: {exc}") from exc
    pairs = (ln.split("=", 1) for ln in text.splitlines() if "=" in ln and not ln.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def install_plugin(dist: Path, zip_path: Path, version: str, java: Path) -> None:
    """Install a plugin zip into the distribution `dist` (replacing an installed lsr-os plugin);
    a zip built for another OpenSearch version is refused before the installer runs."""
    built_for = plugin_descriptor(zip_path).get("opensearch.version")
    if built_for != version:
        raise PluginUnavailable(f"{zip_path.name} was built for OpenSearch {built_for}, but the node runs {version}: "
                                f"build it for {version} (in plugin/: mvn -B -pl opensearch -am package "
                                f"-Dmaven.test.skip=true -Dopensearch.version={version})")
    env = {**os.environ, "OPENSEARCH_JAVA_HOME": str(java), "OPENSEARCH_PATH_CONF": str(dist / "config")}
    env.pop("OPENSEARCH_JAVA_OPTS", None)
    tool = str(dist / "bin" / "opensearch-plugin")
    if (dist / "plugins" / PLUGIN).exists():
        subprocess.run([tool, "remove", PLUGIN], env=env, capture_output=True, text=True, check=False)
        shutil.rmtree(dist / "plugins" / PLUGIN, ignore_errors=True)
    proc = subprocess.run([tool, "install", "-b", zip_path.resolve().as_uri()], env=env, capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and "deprecated" not in ln]
        raise PluginUnavailable(f"opensearch-plugin could not install {zip_path.name}: "
                                f"{lines[-1] if lines else f'exit status {proc.returncode}'}")


def plugin_distribution(dist: Path, version: str, java: Path, step: Step = _quiet) -> tuple[Path, str]:
    """A copy of the distribution with the current plugin build installed, and that build's key.

    The copy hard-links the distribution's files (its own config/ and plugins/), so it costs no
    disk; the distribution itself stays without plugins for nodes started with --no-plugin. The
    plugin is reinstalled when the cached build changed (a running node keeps the files it opened).
    """
    zip_path = build_plugin(version, java, step)
    key = zip_path.parent.name
    target = dist.parent / f"{dist.name}-{PLUGIN}"
    marker = target / f".{PLUGIN}-plugin"
    if marker.exists() and marker.read_text() == key and (target / "plugins" / PLUGIN).is_dir():
        return target, key
    with _plugin_lock():
        if not (marker.exists() and marker.read_text() == key):
            if not (target / "bin" / "opensearch").exists():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(dist, target, copy_function=_link_or_copy,
                                ignore=lambda folder, names: ["config", "plugins"] if Path(folder) == dist else [])
                shutil.copytree(dist / "config", target / "config")
                (target / "plugins").mkdir()
            step(f"installing the lsr-os plugin ({zip_path.name}) into {target}")
            marker.unlink(missing_ok=True)
            install_plugin(target, zip_path, version, java)
            marker.write_text(key)
    return target, key


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a file system without hard links
        shutil.copy2(src, dst)


def _node_distribution(spec: NodeSpec, dist: Path, java: Path, step: Step) -> tuple[Path, str | None]:
    """The distribution the nodes run from, with the plugin unless it is skipped or cannot be had."""
    if spec.plugin == "skip":
        return dist, None
    try:
        return plugin_distribution(dist, spec.version, java, step)
    except PluginUnavailable as exc:
        if spec.plugin == "require":
            raise
        step(f"starting without the lsr-os plugin: {exc}. Everything else in lsr-os works without it; only "
             "typed-text search inside the cluster (a match query, Dashboards' search bar) is missing "
             "(--no-plugin skips this step, --plugin makes it an error)")
        return dist, None


# ----------------------------------------------------------------------------- lifecycle


def _alive(pid: int) -> bool:
    """Whether `pid` is a running OpenSearch process (not a zombie, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return b"org.opensearch.bootstrap.OpenSearch" in cmdline and stat.split(")")[-1].split()[0] != "Z"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http_json(url: str, timeout: float = 5.0) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def _states(port: int) -> list[NodeState]:
    out = []
    for path in sorted(cluster_dir(port).glob("node-*/node.json")):
        out.append(NodeState(**json.loads(path.read_text())))
    return out


def _write_config(spec: NodeSpec, dist: Path, i: int, node_dir: Path) -> Path:
    """A config folder of the node's own: the distribution's files plus our opensearch.yml and heap."""
    conf = node_dir / "config"
    if conf.exists():
        shutil.rmtree(conf)
    shutil.copytree(dist / "config", conf)
    names = [f"node-{j + 1}" for j in range(spec.nodes)]
    settings = {
        "cluster.name": spec.cluster_name,
        "node.name": names[i],
        "network.host": "127.0.0.1",
        "http.port": spec.http_port(i),
        "transport.port": spec.transport_port(i),
        "path.data": str(_data_dir(spec, i, node_dir)),
        "path.logs": str(node_dir / "logs"),
        "path.repo": str(Path(spec.repo).resolve() if spec.repo else cluster_dir(spec.port) / "snapshots"),
        # Local development: never stop allocating shards because a laptop's disk is full-ish.
        "cluster.routing.allocation.disk.threshold_enabled": False,
    }
    if spec.nodes == 1:
        settings["discovery.type"] = "single-node"
    else:
        settings["discovery.seed_hosts"] = [f"127.0.0.1:{spec.transport_port(j)}" for j in range(spec.nodes)]
        settings["cluster.initial_cluster_manager_nodes"] = names
    (conf / "opensearch.yml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    (conf / "jvm.options.d").mkdir(exist_ok=True)
    (conf / "jvm.options.d" / "heap.options").write_text(f"-Xms{spec.heap}\n-Xmx{spec.heap}\n")
    return conf


def _data_dir(spec: NodeSpec, i: int, node_dir: Path) -> Path:
    if spec.data is None:
        return node_dir / "data"
    return Path(spec.data) / f"node-{i + 1}" if spec.nodes > 1 else Path(spec.data)


def _log_tail(node_dir: Path, lines: int = 20, console: bool = False) -> str:
    """The end of a node's main log; with `console`, also what the JVM printed before logging began."""
    paths = [p for p in (node_dir / "logs").glob("*.log") if "deprecation" not in p.name and "_index_" not in p.name]
    if console or not paths:
        paths.insert(0, node_dir / "console.log")
    texts = []
    for path in paths:
        if path.exists() and path.stat().st_size:
            texts.append(f"--- {path}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    return "\n".join(texts) or "(no log written)"


def start(spec: NodeSpec, timeout: float = 180.0, step: Step = _quiet) -> list[NodeState]:
    """Start the cluster's nodes (provisioning on first use) and wait until it is ready.

    Idempotent: nodes already running are reported with `already_running=True`, provided they
    run the version asked for, and the data folder when one is asked for (`spec.data`); otherwise
    nothing is started and the error says so (a silent "already running" would leave the caller
    on data they did not ask for).
    """
    running = {s.name: s for s in _states(spec.port) if _alive(s.pid)}
    expected = [f"node-{i + 1}" for i in range(spec.nodes)]
    for i, name in enumerate(expected):
        state = running.get(name)
        want = _data_dir(spec, i, cluster_dir(spec.port) / name).resolve()
        other_data = spec.data is not None and state is not None and Path(state.data).resolve() != want
        if state is not None and (state.version != spec.version or other_data):
            raise NodeError(f"{name} on port {state.http_port} already runs OpenSearch {state.version} on data "
                            f"{state.data}, not {spec.version} on {want}; stop it first "
                            f"(lsr-os node stop --port {spec.port}) or choose another --port")
        if state is not None and (spec.plugin, state.plugin is None) in (("require", True), ("skip", False)):
            raise NodeError(f"{name} on port {state.http_port} already runs "
                            f"{'without' if state.plugin is None else 'with'} the lsr-os plugin; stop it first "
                            f"(lsr-os node stop --port {spec.port}) or choose another --port")
    if running and set(running) >= set(expected):
        for s in running.values():
            s.already_running = True
        return [running[n] for n in expected]
    for i in range(spec.nodes):
        for port in (spec.http_port(i), spec.transport_port(i)):
            if f"node-{i + 1}" not in running and _port_open(port):
                raise NodeError(f"port {port} on 127.0.0.1 is in use by another process; choose --port")

    if running and spec.plugin == "auto":  # a node that rejoins runs what its cluster runs
        spec = replace(spec, plugin="require" if any(s.plugin for s in running.values()) else "skip")
    dist = provision(spec.version, step)
    java = find_java(spec.version)
    dist, plugin = _node_distribution(spec, dist, java, step)
    procs: dict[str, subprocess.Popen] = {}
    states: list[NodeState] = []
    for i, name in enumerate(expected):
        if name in running:
            states.append(running[name])
            continue
        node_dir = cluster_dir(spec.port) / name
        node_dir.mkdir(parents=True, exist_ok=True)
        conf = _write_config(spec, dist, i, node_dir)
        env = {**os.environ, "OPENSEARCH_JAVA_HOME": str(java), "OPENSEARCH_PATH_CONF": str(conf)}
        env.pop("OPENSEARCH_JAVA_OPTS", None)
        cmd = [str(dist / "bin" / "opensearch"), "-p", str(node_dir / "opensearch.pid")]
        if os.geteuid() == 0:
            # OpenSearch will not run as root; a user namespace runs it as an unprivileged uid
            # while the files it writes stay owned by the caller.
            if not shutil.which("unshare"):
                raise NodeError("running as root needs `unshare` (util-linux) to start OpenSearch as a non-root user")
            cmd = ["unshare", "--user", f"--map-user={_UNPRIVILEGED_ID}", f"--map-group={_UNPRIVILEGED_ID}", *cmd]
        log.info("starting %s: %s", name, " ".join(cmd))
        step(f"starting {name} (OpenSearch {spec.version}) on http://127.0.0.1:{spec.http_port(i)}")
        with open(node_dir / "console.log", "wb") as console:
            proc = subprocess.Popen(cmd, env=env, stdout=console, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=node_dir)
        procs[name] = proc
        state = NodeState(name=name, pid=proc.pid, version=spec.version,
                          url=f"http://127.0.0.1:{spec.http_port(i)}", http_port=spec.http_port(i),
                          transport_port=spec.transport_port(i), log_file=str(node_dir / "logs" / f"{spec.cluster_name}.log"),
                          data=str(_data_dir(spec, i, node_dir)), plugin=plugin)
        (node_dir / "node.json").write_text(json.dumps(asdict(state) | {"already_running": False}))
        states.append(state)
    _wait_ready(spec, states, procs, timeout, step)
    return states


def _wait_ready(spec: NodeSpec, states: list[NodeState], procs: dict[str, subprocess.Popen], timeout: float,
                step: Step = _quiet) -> None:
    started = time.monotonic()
    deadline = started + timeout
    told = 0
    health_url = f"{states[0].url}/_cluster/health?wait_for_nodes={spec.nodes}&wait_for_status=yellow&timeout=2s"
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            if proc.poll() is not None:
                node_dir = cluster_dir(spec.port) / name
                _stop_pids([s.pid for s in states if s.name in procs])
                raise NodeError(f"OpenSearch {name} exited with status {proc.returncode} while starting; "
                                f"last lines of its logs:\n{_log_tail(node_dir, console=True)}")
        health = _http_json(health_url)
        if health and not health.get("timed_out") and health.get("number_of_nodes", 0) >= spec.nodes:
            log.info("cluster %s is %s with %d nodes", health["cluster_name"], health["status"], health["number_of_nodes"])
            return
        waited = int(time.monotonic() - started)
        if waited >= told + 10:
            told = waited
            step(f"waiting for the cluster to be ready ({waited} s; usually 20-60 s)")
        time.sleep(1.0)
    tails = "\n".join(_log_tail(cluster_dir(spec.port) / n, 10, console=True) for n in procs)
    _stop_pids([s.pid for s in states if s.name in procs])
    raise NodeError(f"OpenSearch was not ready after {timeout:.0f}s (stopped it); last lines of its logs:\n{tails}")


def _stop_pids(pids: list[int], grace: float = 60.0) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            log.warning("pid %d did not stop within %.0fs; killing it", pid, grace)
            os.kill(pid, signal.SIGKILL)
    for pid in pids:
        try:  # reap our own children so they leave no zombie behind
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass


def stop(port: int = 9200, names: list[str] | None = None) -> list[int]:
    """Stop the cluster's nodes (or only `names`) and wait until their processes are gone."""
    known = _states(port)
    unknown = sorted(set(names or ()) - {s.name for s in known})
    if unknown:
        raise NodeError(f"no node {', '.join(unknown)} on port {port} (nodes: {', '.join(s.name for s in known) or 'none'})")
    states = [s for s in known if names is None or s.name in names]
    pids = [s.pid for s in states if _alive(s.pid)]
    _stop_pids(pids)
    return pids


def status(port: int = 9200) -> dict:
    """Each node's process and version, and the cluster's health."""
    nodes = []
    for s in _states(port):
        alive = _alive(s.pid)
        info = _http_json(s.url) if alive else None
        nodes.append({"name": s.name, "pid": s.pid, "url": s.url, "running": alive,
                      "version": info["version"]["number"] if info else None})
    live = [n for n in nodes if n["running"]]
    health = _http_json(f"{live[0]['url']}/_cluster/health") if live else None
    return {
        "running": bool(live),
        "nodes": nodes,
        "url": live[0]["url"] if live else None,
        "version": live[0]["version"] if live else None,
        "cluster_name": health["cluster_name"] if health else None,
        "health": health["status"] if health else None,
        "number_of_nodes": health["number_of_nodes"] if health else 0,
    }


def logs(port: int = 9200, lines: int = 50) -> str:
    """The last lines of each node's log."""
    dirs = sorted(cluster_dir(port).glob("node-*"))
    if not dirs:
        raise NodeError(f"no local node was ever started on port {port} (state folder {cluster_dir(port)})")
    return "\n".join(_log_tail(d, lines) for d in dirs)


def connect_or_start(cluster, allow_start: bool = True, step: Step = log.warning):
    """The engine of the configured cluster; with the default URL and no node answering there, a
    local node is started first (the demo's "works on a fresh machine"), telling `step` how far."""
    from lsr_os.config import DEFAULT_URL
    from lsr_os.engines import connect
    from lsr_os.errors import ClusterUnreachable

    try:
        return connect(cluster)
    except ClusterUnreachable:
        if not allow_start or cluster.urls != (DEFAULT_URL,):
            raise
    step("no cluster at the default URL: starting a local node (as `lsr-os node start` does)")
    start(NodeSpec(), step=step)
    return connect(cluster)
