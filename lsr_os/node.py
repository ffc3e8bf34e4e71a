"""Local OpenSearch and Elasticsearch nodes without Docker, from the official artifacts on Maven Central.

Both engines' builds publish an integration-test distribution to Maven Central. We fetch it with
`mvn` (so a site's Maven mirror settings apply; straight HTTPS when Maven is absent), unpack it
once into a cache, let the engine add what the archive lacks, and run one or more nodes on
127.0.0.1, each with its own config, data and log folders, as an unprivileged uid when we are
root. What differs between the engines (artifact, names, settings, readiness, security tools) is
asked of the engine's `NodeLayout` (`lsr_os/engines/<engine>/node.py`, which also pins its default
version); this module holds the engine-free machinery.

The lsr-os plugin (`plugin/`, shipped as package data) is built once per source, engine and
version with Maven and installed into a copy of the distribution, so nodes can start with it or,
from the untouched distribution, without it.

A secured cluster (`secure`, Elasticsearch) gets a CA, a node certificate and a superuser made by
the distribution's own tools, kept in `<cluster dir>/security/` (keys and passwords mode 0600,
never logged); `add_user` adds more users to it while it runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.client
import importlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from base64 import b64encode
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable, Iterator, Literal

from lsr_os.engines import ENGINES
from lsr_os.engines.base.node import CA_CERT, NODE_CERT, NODE_KEY, Answer, NodeLayout
# The OpenSearch pin lives with the OpenSearch layout; re-exported because callers name it here.
from lsr_os.engines.opensearch.node import DEFAULT_VERSION
from lsr_os.errors import NodeError, PluginUnavailable

log = logging.getLogger(__name__)

DEFAULT_ENGINE = "opensearch"
MAVEN_CENTRAL = "https://repo1.maven.org/maven2"
JVM_ROOT = Path("/usr/lib/jvm")
# An unprivileged uid to run as when we are root: neither engine runs as root.
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
# The superuser a secured cluster is made with; more users: add_user.
SUPERUSER = "admin"
# Names and roles the file realm takes (and that are safe in a file name).
_USER_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@-]{0,63}")
# Where a secured cluster's CA key stays (in its security folder; no node needs it).
_CA_KEY = "certs/ca.key"
# A security tool (certificates, users) is a small JVM that answers in seconds.
_TOOL_TIMEOUT_S = 120


def home() -> Path:
    """Where artifacts, distributions and node state live (LSR_OS_HOME overrides)."""
    return Path(os.environ.get("LSR_OS_HOME") or Path.home() / ".cache" / "lsr-os")


@functools.cache
def layout(engine: str) -> NodeLayout:
    """The node layout of `engine` (one of ENGINES)."""
    if engine not in ENGINES:
        raise NodeError(f"engine {engine!r} is not one of {', '.join(ENGINES)}")
    return importlib.import_module(f"lsr_os.engines.{engine}.node").NodeLayout()


@dataclass
class NodeSpec:
    """What to run: a cluster of `nodes` local nodes of `engine` whose first HTTP port is `port`
    (version and port default to the engine's)."""

    version: str | None = None
    port: int | None = None
    data: Path | None = None
    heap: str = "1g"
    nodes: int = 1
    cluster_name: str = "lsr-os"
    # Snapshot repositories must lie inside path.repo; another cluster's folder here lets this
    # one restore that cluster's snapshots (default: <cluster dir>/snapshots).
    repo: Path | None = None
    plugin: PluginMode = "auto"
    engine: str = DEFAULT_ENGINE
    # HTTPS, TLS between the nodes and users (only where the engine's distribution has security).
    secure: bool = False

    def __post_init__(self) -> None:
        lay = layout(self.engine)
        self.version = self.version or lay.default_version
        self.port = lay.default_port if self.port is None else self.port
        if self.plugin not in ("auto", "require", "skip"):
            raise NodeError(f"plugin mode {self.plugin!r} is not one of auto, require, skip")
        if not re.fullmatch(r"\d+\.\d+\.\d+", self.version):
            raise NodeError(f"{lay.product} version {self.version!r} is not of the form X.Y.Z")
        if not re.fullmatch(r"\d+[mg]", self.heap):
            raise NodeError(f"heap {self.heap!r} must look like 512m or 2g")
        if self.nodes < 1:
            raise NodeError("a cluster needs at least one node")
        if not 1 <= self.port <= self.transport_port(self.nodes - 1) <= 65535:
            raise NodeError(f"port {self.port}: {self.nodes} node(s) need HTTP ports {self.port}-"
                            f"{self.http_port(self.nodes - 1)} and transport ports {self.transport_port(0)}-"
                            f"{self.transport_port(self.nodes - 1)}, all within 1-65535")
        if self.secure and not lay.supports_security:
            raise NodeError(f"a secured node needs security in the distribution: {lay.without_security}")

    @property
    def layout(self) -> NodeLayout:
        return layout(self.engine)

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
    engine: str = DEFAULT_ENGINE  # state written before Elasticsearch existed is OpenSearch's


def cluster_dir(port: int) -> Path:
    return home() / "clusters" / str(port)


def security_dir(port: int) -> Path:
    """A secured cluster's CA, node certificate, users and password files."""
    return cluster_dir(port) / "security"


# ----------------------------------------------------------------------------- provisioning


Step = Callable[[str], None]  # told each step of a long start ("fetching ...", "waiting ..."), for a progress line


def _quiet(message: str) -> None:
    log.info(message)


def fetch_artifact(group: str, artifact: str, ext: str, version: str, step: Step = _quiet,
                   sha256: str | None = None) -> Path:
    """Fetch one artifact into the download cache and return its path; `sha256`, when known, is
    checked whichever way it came (Maven Central publishes no checksum files for some artifacts)."""
    dest_dir = home() / "downloads"
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / f"{artifact}-{version}.{ext}"
    if dest.exists():
        return dest
    coords = f"{group}:{artifact}:{version}:{ext}"
    mvn = shutil.which("mvn")
    if mvn:
        step(f"fetching {coords} with Maven (once; about 100 MB)")
        staging = Path(tempfile.mkdtemp(dir=dest_dir))
        try:
            proc = subprocess.run(
                [mvn, "-B", "-q", "org.apache.maven.plugins:maven-dependency-plugin:3.6.1:copy",
                 f"-Dartifact={coords}", f"-DoutputDirectory={staging}"],
                capture_output=True, text=True, check=False,
            )
            if proc.returncode != 0 or not (staging / dest.name).exists():
                tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
                raise NodeError(f"Maven could not fetch {coords}:\n{tail}")
            _check_digest(staging / dest.name, "sha256", sha256, coords)
            os.replace(staging / dest.name, dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return dest
    url = _central_url(group, artifact, ext, version)
    algorithm, expected = ("sha256", sha256) if sha256 else ("sha1", _published_sha1(url, coords))
    step(f"downloading {url} (once; about 100 MB)")
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, tempfile.NamedTemporaryFile(dir=dest_dir, delete=False) as tmp:
            shutil.copyfileobj(resp, tmp)
    except urllib.error.HTTPError as exc:
        raise NodeError(f"{coords} is not on Maven Central ({url}: HTTP {exc.code})") from exc
    except urllib.error.URLError as exc:
        raise NodeError(f"cannot reach Maven Central for {coords}: {exc.reason}") from exc
    try:
        _check_digest(Path(tmp.name), algorithm, expected, coords)
    except NodeError:
        os.unlink(tmp.name)
        raise
    os.replace(tmp.name, dest)
    return dest


def _published_sha1(url: str, coords: str) -> str:
    """The artifact's .sha1 file, asked before the download (a missing one fails in seconds)."""
    try:
        with urllib.request.urlopen(url + ".sha1", timeout=60) as resp:
            return resp.read().decode().split()[0]
    except urllib.error.HTTPError as exc:
        if _served(url):
            raise NodeError(f"Maven Central publishes no checksum for {coords} ({url}.sha1: HTTP {exc.code}), so "
                            "the download cannot be checked: install Maven (mvn), which fetches it as a build "
                            "would") from exc
        raise NodeError(f"{coords} is not on Maven Central ({url}: HTTP {exc.code})") from exc
    except urllib.error.URLError as exc:
        raise NodeError(f"cannot reach Maven Central for {coords}: {exc.reason}") from exc


def _served(url: str) -> bool:
    """Whether the repository answers `url` (a HEAD request; errors propagate)."""
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30).close()
    except urllib.error.HTTPError:
        return False
    return True


def _check_digest(path: Path, algorithm: str, expected: str | None, coords: str) -> None:
    if not expected:
        return
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise NodeError(f"{coords} does not have the {algorithm} lsr-os expects ({expected}): a damaged or "
                        "different download; it was not kept")


def _central_url(group: str, artifact: str, ext: str, version: str) -> str:
    return f"{MAVEN_CENTRAL}/{group.replace('.', '/')}/{artifact}/{version}/{artifact}-{version}.{ext}"


def provision(version: str, step: Step = _quiet, engine: str = DEFAULT_ENGINE) -> Path:
    """Return an unpacked distribution of `engine` `version` with what lsr-os needs in it
    (for OpenSearch: rank_features)."""
    lay = layout(engine)
    dist = home() / "dist" / f"{lay.distribution[1]}-{version}"
    if lay.is_complete(dist):
        return dist
    archive = fetch_artifact(*lay.distribution, version, step=step, sha256=lay.checksums.get(version))
    step(f"unpacking {archive.name} into {dist}")
    dist.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dist.parent))
    try:
        _unzip(archive, staging)
        (top,) = [p for p in staging.iterdir() if p.is_dir()]
        lay.complete(top, version, fetch_artifact)
        shutil.rmtree(dist, ignore_errors=True)
        os.replace(top, dist)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("%s %s unpacked in %s", lay.product, version, dist)
    return dist


def _unzip(archive: Path, dest: Path) -> None:
    """Unzip keeping the executable bits (zipfile alone drops them)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = zf.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)


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


def find_java(version: str, engine: str = DEFAULT_ENGINE) -> Path:
    """A JDK that `engine` `version` runs on: JAVA_HOME if new enough, else the newest under /usr/lib/jvm."""
    lay = layout(engine)
    needed = lay.java_needed(version)
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
    raise NodeError(f"{lay.product} {version} needs Java {needed} or newer; JDKs found: {seen}. "
                    "Install one or set JAVA_HOME.")


def preflight(engines: tuple[str, ...] = ENGINES) -> None:
    """Fail in seconds and one line when local nodes cannot be had: no JDK new enough for an
    engine's default version, or Maven Central not serving its distribution (CI asks this first)."""
    for engine in engines:
        lay = layout(engine)
        find_java(lay.default_version, engine)
        url = _central_url(*lay.distribution, lay.default_version)
        try:
            served = _served(url)
        except (OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            raise NodeError(f"cannot reach Maven Central ({MAVEN_CENTRAL}: {reason}); the nodes' distributions "
                            "and the plugin's build come from it") from exc
        if not served:
            raise NodeError(f"Maven Central does not serve {lay.product} {lay.default_version} ({url})")


def _as_unprivileged(cmd: list[str], product: str) -> list[str]:
    """`cmd` as it must run: when we are root, inside a user namespace as an unprivileged uid, so
    the engine accepts it while the files it writes stay owned by the caller."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("unshare"):
        raise NodeError(f"running as root needs `unshare` (util-linux) to start {product} as a non-root user")
    return ["unshare", "--user", f"--map-user={_UNPRIVILEGED_ID}", f"--map-group={_UNPRIVILEGED_ID}", *cmd]


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
        raise PluginUnavailable(f"{zip_path} is not a plugin zip: {exc}") from exc
    pairs = (ln.split("=", 1) for ln in text.splitlines() if "=" in ln and not ln.lstrip().startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def install_plugin(dist: Path, zip_path: Path, version: str, java: Path, engine: str = DEFAULT_ENGINE) -> None:
    """Install a plugin zip into the distribution `dist` of `engine` (replacing an installed lsr-os
    plugin); a zip built for another engine or version is refused before the installer runs."""
    lay = layout(engine)
    descriptor = plugin_descriptor(zip_path)
    built_for = next(((e, descriptor[f"{e}.version"]) for e in PLUGIN_ENGINES if f"{e}.version" in descriptor), None)
    if built_for != (engine, version):
        what = f"{layout(built_for[0]).product} {built_for[1]}" if built_for else "no engine version"
        raise PluginUnavailable(f"{zip_path.name} was built for {what}, but the node runs {lay.product} {version}: "
                                f"build it for {version} (in plugin/: mvn -B -pl {engine} -am package "
                                f"-Dmaven.test.skip=true -D{engine}.version={version})")
    env = {**os.environ, lay.java_home_env: str(java), lay.path_conf_env: str(dist / "config")}
    env.pop(lay.java_opts_env, None)
    tool = str(dist / "bin" / lay.plugin_tool)
    if (dist / "plugins" / PLUGIN).exists():
        subprocess.run([tool, "remove", PLUGIN], env=env, capture_output=True, text=True, check=False)
        shutil.rmtree(dist / "plugins" / PLUGIN, ignore_errors=True)
    proc = subprocess.run([tool, "install", "--batch", zip_path.resolve().as_uri()], env=env, capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.strip() and "deprecated" not in ln]
        raise PluginUnavailable(f"{lay.plugin_tool} could not install {zip_path.name}: "
                                f"{lines[-1] if lines else f'exit status {proc.returncode}'}")


def plugin_distribution(dist: Path, version: str, java: Path, step: Step = _quiet,
                        engine: str = DEFAULT_ENGINE) -> tuple[Path, str]:
    """A copy of the distribution with the current plugin build installed, and that build's key.

    The copy hard-links the distribution's files (its own config/ and plugins/), so it costs no
    disk; the distribution itself stays without plugins for nodes started with --no-plugin. Each
    plugin build gets its own copy: a node reads the plugin's files (its vocabulary) after it
    started, so a newer build installed in place would break nodes still running the older one.
    """
    zip_path = build_plugin(version, java, step, engine)
    key = zip_path.parent.name
    target = dist.parent / f"{dist.name}-{PLUGIN}-{key.rsplit('-', 1)[-1]}"
    marker = target / f".{PLUGIN}-plugin"
    if marker.exists() and marker.read_text() == key and (target / "plugins" / PLUGIN).is_dir():
        return target, key
    with _plugin_lock():
        if not (marker.exists() and marker.read_text() == key):
            if not (target / "bin" / layout(engine).executable).exists():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(dist, target, copy_function=_link_or_copy,
                                ignore=lambda folder, names: ["config", "plugins"] if Path(folder) == dist else [])
                shutil.copytree(dist / "config", target / "config")
                (target / "plugins").mkdir()
            step(f"installing the lsr-os plugin ({zip_path.name}) into {target}")
            marker.unlink(missing_ok=True)
            install_plugin(target, zip_path, version, java, engine)
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
        return plugin_distribution(dist, spec.version, java, step, spec.engine)
    except PluginUnavailable as exc:
        if spec.plugin == "require":
            raise
        step(f"starting without the lsr-os plugin: {exc}. Everything else in lsr-os works without it; only "
             "typed-text search inside the cluster (a match query, Dashboards' search bar) is missing "
             "(--no-plugin skips this step, --plugin makes it an error)")
        return dist, None


# ----------------------------------------------------------------------------- talking to a node


@dataclass(frozen=True)
class Access:
    """How to reach a local cluster: plain http, or https with its CA and a user's password."""

    ca: Path | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)

    def context(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=str(self.ca)) if self.ca else None

    def headers(self) -> dict[str, str]:
        if self.user is None:
            return {}
        return {"Authorization": "Basic " + b64encode(f"{self.user}:{self.password}".encode()).decode()}


def _get(url: str, access: Access | None = None, timeout: float = 5.0) -> Answer | None:
    """GET `url`: the answer, error statuses included, or None when nothing answered."""
    access = access or Access()
    request = urllib.request.Request(url, headers=access.headers())
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=access.context()) as resp:
            status, headers, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as exc:
        status, headers, raw = exc.code, exc.headers, exc.read()
    except (OSError, http.client.HTTPException):
        return None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return Answer(status, {k.lower(): v for k, v in headers.items()}, body)


def _alive(pid: int) -> bool:
    """Whether `pid` is a running node we started (not a zombie, not a reused pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    ours = any(layout(e).server_marker in cmdline for e in ENGINES)
    return ours and stat.split(")")[-1].split()[0] != "Z"


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _states(port: int) -> list[NodeState]:
    out = []
    for path in sorted(cluster_dir(port).glob("node-*/node.json")):
        out.append(NodeState(**json.loads(path.read_text())))
    return out


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- security


def _write_secret(path: Path, text: str) -> None:
    """Write a file only its owner can read (mode 0600, whatever the umask or an older file's mode)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text + "\n")


def _run_tool(lay: NodeLayout, dist: Path, java: Path, conf: Path, argv: list[str], stdin: str | None = None) -> None:
    """Run one of the distribution's bin/ tools on the config folder `conf`, as the nodes run.
    `stdin` (a password) is never logged nor put in an error."""
    env = {**os.environ, lay.java_home_env: str(java), lay.path_conf_env: str(conf)}
    env.pop(lay.java_opts_env, None)
    cmd = _as_unprivileged([str(dist / "bin" / argv[0]), *argv[1:]], lay.product)
    log.info("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, env=env, input=stdin, capture_output=True, text=True, check=False,
                              timeout=_TOOL_TIMEOUT_S, cwd=conf.parent)
    except subprocess.TimeoutExpired as exc:
        raise NodeError(f"{argv[0]} {argv[1]} did not finish within {exc.timeout:.0f} s") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stdout + proc.stderr).splitlines()
                 if ln.strip() and "password:" not in ln.lower()]
        raise NodeError(f"{argv[0]} {argv[1]} failed (exit status {proc.returncode}): "
                        f"{lines[-1] if lines else 'no output'}")


def _security(port: int) -> dict:
    """The secured cluster's facts as stored (CA, superuser, users, their roles and password files)."""
    path = security_dir(port) / "security.json"
    if not path.exists():
        raise NodeError(f"the local cluster on port {port} is not secured (start it with --secure)")
    return json.loads(path.read_text())


def _access(port: int) -> Access | None:
    """The superuser's access to the cluster on `port`, or None when it is not secured."""
    try:
        facts = _security(port)
    except NodeError:
        return None
    user = facts["superuser"]
    password = Path(facts["users"][user]["password_file"]).read_text().strip()
    return Access(ca=Path(facts["ca_certs"]), user=user, password=password)


def _make_security(spec: NodeSpec, dist: Path, java: Path, step: Step) -> None:
    """Once per cluster folder: a CA, a certificate for 127.0.0.1/localhost signed by it, and the
    superuser, all made with the distribution's own tools (the nodes' config folders get copies)."""
    folder = security_dir(spec.port)
    if (folder / "security.json").exists():
        return
    lay = spec.layout
    step(f"making a CA, a node certificate and the user {SUPERUSER} with {lay.product}'s own tools")
    started = time.monotonic()
    cluster_dir(spec.port).mkdir(parents=True, exist_ok=True)
    shutil.rmtree(folder, ignore_errors=True)  # a half-made one from an interrupted start
    work = Path(tempfile.mkdtemp(dir=cluster_dir(spec.port), prefix=".security-"))  # mode 0700
    try:
        conf = work / "config"  # the users tool's config folder: it writes the users there
        shutil.copytree(dist / "config", conf)
        _run_tool(lay, dist, java, conf, lay.certificate_authority_command(work / "ca.zip"))
        ca_cert, ca_key = _unzip_pem(work / "ca.zip")
        _run_tool(lay, dist, java, conf, lay.node_certificate_command(ca_cert, ca_key, work / "node.zip"))
        node_cert, node_key = _unzip_pem(work / "node.zip")
        (work / "certs").mkdir()
        for pem, target in ((ca_cert, CA_CERT), (ca_key, _CA_KEY), (node_cert, NODE_CERT), (node_key, NODE_KEY)):
            os.replace(pem, work / target)
            os.chmod(work / target, 0o600 if target.endswith(".key") else 0o644)
        for made in ("ca", "node"):
            shutil.rmtree(work / made)
        password = secrets.token_urlsafe(18)
        _write_secret(work / f"{SUPERUSER}.password", password)
        _run_tool(lay, dist, java, conf, lay.add_user_command(SUPERUSER, "superuser"), stdin=f"{password}\n{password}\n")
        _write_json(work / "security.json", {
            "ca_certs": str(folder / CA_CERT), "superuser": SUPERUSER,
            "users": {SUPERUSER: {"role": "superuser", "password_file": str(folder / f"{SUPERUSER}.password")}}})
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log.info("security for the cluster on port %d made in %.1f s", spec.port, time.monotonic() - started)


def _unzip_pem(archive: Path) -> tuple[Path, Path]:
    """Unpack a certificate tool's zip next to it (then remove it): its certificate and key."""
    out = archive.with_suffix("")
    _unzip(archive, out)
    archive.unlink()
    return next(out.rglob("*.crt")), next(out.rglob("*.key"))


def _install_security(spec: NodeSpec, conf: Path) -> None:
    """Give a node's config folder the cluster's certificate, key, CA and users."""
    folder = security_dir(spec.port)
    (conf / "certs").mkdir(exist_ok=True)
    for name in (CA_CERT, NODE_CERT, NODE_KEY):
        shutil.copy2(folder / name, conf / name)
    for name in spec.layout.user_files():
        shutil.copy2(folder / "config" / name, conf / name)


def add_user(port: int, name: str, role: str, timeout: float = 60.0) -> Path:
    """Add a user with `role` (e.g. viewer, superuser) to the secured local cluster on `port`, and
    wait until it can log in where nodes run; returns its password file (mode 0600).

    Idempotent for the same name and role (the existing password file is returned): CI and test
    fixtures call it on every run. Users live in the cluster's file realm, which running nodes
    reload by themselves.
    """
    for what, value in (("user name", name), ("role", role)):
        if not _USER_NAME.fullmatch(value):
            raise NodeError(f"{what} {value!r} must be letters, digits and _ . @ - (at most 64)")
    facts = _security(port)
    known = facts["users"].get(name)
    if known and known["role"] == role:
        return Path(known["password_file"])
    if known:
        raise NodeError(f"user {name} already exists on the cluster on port {port} with role {known['role']}, not {role}")
    states = _states(port)
    lay = layout(states[0].engine)
    dist = provision(states[0].version, engine=states[0].engine)
    java = find_java(states[0].version, states[0].engine)
    folder = security_dir(port)
    password = secrets.token_urlsafe(18)
    password_file = folder / f"{name}.password"
    _write_secret(password_file, password)
    _run_tool(lay, dist, java, folder / "config", lay.add_user_command(name, role), stdin=f"{password}\n{password}\n")
    facts["users"][name] = {"role": role, "password_file": str(password_file)}
    _write_json(folder / "security.json", facts)
    confs = [cluster_dir(port) / s.name / "config" for s in states]
    for conf, file_name in ((c, f) for c in confs if c.is_dir() for f in lay.user_files()):
        # The realm watches these files: replace each whole, never half-written.
        shutil.copy2(folder / "config" / file_name, conf / f".{file_name}.tmp")
        os.replace(conf / f".{file_name}.tmp", conf / file_name)
    live = [s for s in states if _alive(s.pid)]
    deadline = time.monotonic() + timeout
    access = Access(ca=Path(facts["ca_certs"]), user=name, password=password)
    for state in live:
        while (answer := _get(f"{state.url}/_security/_authenticate", access)) is None or answer.status != 200:
            if time.monotonic() > deadline:
                raise NodeError(f"user {name} was added but cannot log in to {state.name} at {state.url} after "
                                f"{timeout:.0f} s (last answer: {answer.status if answer else 'none'})")
            time.sleep(0.5)
    log.info("user %s (role %s) added to the cluster on port %d", name, role, port)
    return password_file


# ----------------------------------------------------------------------------- lifecycle


def _write_config(spec: NodeSpec, dist: Path, i: int, node_dir: Path) -> Path:
    """A config folder of the node's own: the distribution's files plus our settings file and heap."""
    lay = spec.layout
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
        settings[lay.initial_nodes_setting] = names
    settings |= lay.settings(spec.secure)
    (conf / lay.config_file).write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in settings.items()))
    if spec.secure:
        _install_security(spec, conf)
    (conf / "jvm.options.d").mkdir(exist_ok=True)
    (conf / "jvm.options.d" / "heap.options").write_text(f"-Xms{spec.heap}\n-Xmx{spec.heap}\n")
    return conf


def _data_dir(spec: NodeSpec, i: int, node_dir: Path) -> Path:
    if spec.data is None:
        return node_dir / "data"
    return Path(spec.data) / f"node-{i + 1}" if spec.nodes > 1 else Path(spec.data)


def _log_tail(node_dir: Path, lines: int = 20, console: bool = False) -> str:
    """The end of a node's main log; with `console`, also what the JVM printed before logging began."""
    paths = [p for p in (node_dir / "logs").glob("*.log")
             if "deprecation" not in p.name and "_index_" not in p.name and not p.name.startswith("gc.")]
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
    run the engine and version asked for, with security when asked, and the data folder when one
    is asked for (`spec.data`); otherwise nothing is started and the error says so (a silent
    "already running" would leave the caller on data they did not ask for).
    """
    lay = spec.layout
    known = _states(spec.port)
    running = {s.name: s for s in known if _alive(s.pid)}
    expected = [f"node-{i + 1}" for i in range(spec.nodes)]
    for i, name in enumerate(expected):
        state = running.get(name)
        if state is None:
            continue
        want = _data_dir(spec, i, cluster_dir(spec.port) / name).resolve()
        other_data = spec.data is not None and Path(state.data).resolve() != want
        if state.engine != spec.engine or state.version != spec.version or other_data:
            raise NodeError(f"{name} on port {state.http_port} already runs {layout(state.engine).product} "
                            f"{state.version} on data {state.data}, not {lay.product} {spec.version} on {want}; "
                            f"stop it first (lsr-os node stop --port {spec.port}) or choose another --port")
        if (spec.plugin, state.plugin is None) in (("require", True), ("skip", False)):
            raise NodeError(f"{name} on port {state.http_port} already runs "
                            f"{'without' if state.plugin is None else 'with'} the lsr-os plugin; stop it first "
                            f"(lsr-os node stop --port {spec.port}) or choose another --port")
        if state.url.startswith("https:") != spec.secure:
            raise NodeError(f"{name} on port {state.http_port} already runs {'with' if not spec.secure else 'without'} "
                            f"security (--secure); stop it first (lsr-os node stop --port {spec.port}) or choose "
                            "another --port")
    others = sorted({s.engine for s in known} - {spec.engine})
    if others:
        raise NodeError(f"{cluster_dir(spec.port)} holds an earlier {layout(others[0]).product} cluster's state and "
                        f"data, which {lay.product} cannot use: remove that folder or choose another --port")
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
    dist = provision(spec.version, step, spec.engine)
    java = find_java(spec.version, spec.engine)
    dist, plugin = _node_distribution(spec, dist, java, step)
    if spec.secure:
        _make_security(spec, dist, java, step)
    scheme = "https" if spec.secure else "http"
    procs: dict[str, subprocess.Popen] = {}
    states: list[NodeState] = []
    for i, name in enumerate(expected):
        if name in running:
            running[name].already_running = True
            states.append(running[name])
            continue
        node_dir = cluster_dir(spec.port) / name
        node_dir.mkdir(parents=True, exist_ok=True)
        conf = _write_config(spec, dist, i, node_dir)
        env = {**os.environ, lay.java_home_env: str(java), lay.path_conf_env: str(conf)}
        env.pop(lay.java_opts_env, None)
        pid_file = _pid_file(lay, node_dir)
        pid_file.unlink(missing_ok=True)
        cmd = _as_unprivileged([str(dist / "bin" / lay.executable), "-p", str(pid_file)], lay.product)
        log.info("starting %s: %s", name, " ".join(cmd))
        step(f"starting {name} ({lay.product} {spec.version}) on {scheme}://127.0.0.1:{spec.http_port(i)}")
        with open(node_dir / "console.log", "wb") as console:
            proc = subprocess.Popen(cmd, env=env, stdout=console, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=node_dir)
        procs[name] = proc
        state = NodeState(name=name, pid=proc.pid, version=spec.version,
                          url=f"{scheme}://127.0.0.1:{spec.http_port(i)}", http_port=spec.http_port(i),
                          transport_port=spec.transport_port(i), log_file=str(node_dir / "logs" / f"{spec.cluster_name}.log"),
                          data=str(_data_dir(spec, i, node_dir)), plugin=plugin, engine=spec.engine)
        (node_dir / "node.json").write_text(json.dumps(asdict(state) | {"already_running": False}))
        states.append(state)
    try:
        _wait_ready(spec, states, procs, timeout, step)
    except NodeError:
        _abort(spec, procs)
        raise
    return states


def _pid_file(lay: NodeLayout, node_dir: Path) -> Path:
    return node_dir / f"{lay.executable}.pid"


def _server_pid(lay: NodeLayout, node_dir: Path) -> int | None:
    """The pid the node's server JVM wrote to its pid file (None before it did)."""
    try:
        return int(_pid_file(lay, node_dir).read_text().strip())
    except (OSError, ValueError):
        return None


def _track_server(lay: NodeLayout, state: NodeState, node_dir: Path) -> None:
    """Record the server JVM's pid once its pid file names it: a launcher may sit between the
    process we started and the server (Elasticsearch), and `stop` must find the server."""
    pid = _server_pid(lay, node_dir)
    if pid and pid != state.pid:
        state.pid = pid
        (node_dir / "node.json").write_text(json.dumps(asdict(state) | {"already_running": False}))


def _abort(spec: NodeSpec, procs: dict[str, subprocess.Popen]) -> None:
    """Stop the nodes this start launched: their servers, then whatever launcher is left."""
    dirs = [cluster_dir(spec.port) / name for name in procs]
    _stop_pids([pid for pid in (_server_pid(spec.layout, d) for d in dirs) if pid])
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(spec: NodeSpec, states: list[NodeState], procs: dict[str, subprocess.Popen], timeout: float,
                step: Step = _quiet) -> None:
    lay = spec.layout
    access = _access(spec.port) if spec.secure else None
    started = time.monotonic()
    deadline = started + timeout
    told = 0
    health_url = f"{states[0].url}/_cluster/health?wait_for_nodes={spec.nodes}&wait_for_status=yellow&timeout=2s"
    while time.monotonic() < deadline:
        for name, proc in procs.items():
            node_dir = cluster_dir(spec.port) / name
            if proc.poll() is not None:
                raise NodeError(f"{lay.product} {name} exited with status {proc.returncode} while starting; "
                                f"last lines of its logs:\n{_log_tail(node_dir, console=True)}")
            _track_server(lay, next(s for s in states if s.name == name), node_dir)
        answer = _get(health_url, access)
        health = answer.body if answer and answer.status == 200 and lay.is_engine(answer) else None
        if isinstance(health, dict) and not health.get("timed_out") and health.get("number_of_nodes", 0) >= spec.nodes:
            log.info("cluster %s is %s with %d nodes", health["cluster_name"], health["status"], health["number_of_nodes"])
            return
        waited = int(time.monotonic() - started)
        if waited >= told + 10:
            told = waited
            step(f"waiting for the cluster to be ready ({waited} s; usually 20-60 s)")
        time.sleep(1.0)
    tails = "\n".join(_log_tail(cluster_dir(spec.port) / n, 10, console=True) for n in procs)
    raise NodeError(f"{lay.product} was not ready after {timeout:.0f}s (stopped it); last lines of its logs:\n{tails}")


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


def resolve_port(port: int | None, engine: str | None) -> int:
    """The port of the local cluster meant by `--port` and `--engine` (either may be None): the
    engine's default port when no port is named, and an error when the cluster there runs another engine."""
    if port is None:
        return layout(engine or DEFAULT_ENGINE).default_port
    states = _states(port)
    if engine and states and states[0].engine != engine:
        raise NodeError(f"the local cluster on port {port} is {layout(states[0].engine).product}, "
                        f"not {layout(engine).product}")
    return port


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
    """Each node's process and version, the cluster's health, and for a secured cluster how to
    connect (URL, CA file, superuser and the file holding its password; never the password)."""
    states = _states(port)
    access = _access(port) if any(s.url.startswith("https:") for s in states) else None
    nodes = []
    for s in states:
        alive = _alive(s.pid)
        lay = layout(s.engine)
        answer = _get(s.url + lay.version_path(), access) if alive else None
        nodes.append({"name": s.name, "pid": s.pid, "url": s.url, "running": alive, "engine": s.engine,
                      "version": lay.version_from(answer) if answer and answer.status == 200 else None})
    live = [n for n in nodes if n["running"]]
    answer = _get(f"{live[0]['url']}/_cluster/health", access) if live else None
    health = answer.body if answer and answer.status == 200 and isinstance(answer.body, dict) else None
    return {
        "running": bool(live),
        "engine": nodes[0]["engine"] if nodes else None,
        "nodes": nodes,
        "url": live[0]["url"] if live else None,
        "version": live[0]["version"] if live else None,
        "cluster_name": health["cluster_name"] if health else None,
        "health": health["status"] if health else None,
        "number_of_nodes": health["number_of_nodes"] if health else 0,
        "security": security_info(port) if access else None,
    }


def security_info(port: int) -> dict:
    """How to connect to the secured local cluster on `port`: its CA file, the superuser and the
    file with its password, and every user's role and password file (never a password)."""
    facts = _security(port)
    user = facts["superuser"]
    return {"ca_certs": facts["ca_certs"], "user": user, "password_file": facts["users"][user]["password_file"],
            "users": facts["users"]}


def logs(port: int = 9200, lines: int = 50) -> str:
    """The last lines of each node's log."""
    dirs = sorted(cluster_dir(port).glob("node-*"))
    if not dirs:
        raise NodeError(f"no local node was ever started on port {port} (state folder {cluster_dir(port)})")
    return "\n".join(_log_tail(d, lines) for d in dirs)


def connect_or_start(cluster, allow_start: bool = True, step: Step = log.warning, engine: str | None = None,
                     url_given: bool | None = None):
    """The engine of the configured cluster; with the default URL and no node answering there, a
    local node of `engine` (default OpenSearch) is started first (the demo's "works on a fresh
    machine"), telling `step` how far. With `engine` and the default URL, the default URL is that
    engine's local one (Elasticsearch: port 9400); a cluster of another engine is an error.
    `url_given`: whether the user named the URL (None: when it is not the default one)."""
    from dataclasses import replace as replaced

    from lsr_os.config import DEFAULT_URL
    from lsr_os.engines import connect
    from lsr_os.errors import ClusterUnreachable, ConfigError

    default = cluster.urls == (DEFAULT_URL,) if url_given is None else not url_given
    if engine is not None and default:
        cluster = replaced(cluster, urls=(f"http://localhost:{layout(engine).default_port}",))
    try:
        connected = connect(cluster)
    except ClusterUnreachable:
        if not allow_start or not default:
            raise
        step(f"no cluster at {cluster.urls[0]}: starting a local {layout(engine or DEFAULT_ENGINE).product} "
             f"node (as `lsr-os node start` does)")
        start(NodeSpec(engine=engine or DEFAULT_ENGINE), step=step)
        connected = connect(cluster)
    if engine is not None and connected.name != engine:
        raise ConfigError(f"{', '.join(cluster.urls)} is {connected.display_name}, not {engine}: leave out "
                          f"--engine, or give the URL of an {engine} cluster")
    return connected
