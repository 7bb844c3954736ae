"""Where Spark and Ray come from: an embedded local pair, or clusters the user names.

The engine starts only what it needs and stops only what it started: a Spark session
or Ray connection that already existed (or an address the user gave) is left alone.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from dataclasses import dataclass, field

from hybrid_infer.errors import ConfigurationError

log = logging.getLogger(__name__)

#: Ray namespace that holds every pool's named actors.
NAMESPACE = "hybrid_infer"

#: Environment of a pool's Ray workers (its manager and actors). Ray nices worker
#: processes to 15 so that drivers keep priority; a pool's actors do the jobs' compute,
#: and at 15 every Spark task on their node (nice 0) would preempt the model.
#: MALLOC_ARENA_MAX=2: fewer glibc arenas for the decode threads (bounded memory).
#: MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_: a CPU model's activations (tens of
#: MB a batch) are reused from the heap instead of mmap'ed and zeroed by the kernel at
#: every forward pass (resnet18 frozen, 2 streams: 25k page faults a pass, 55 -> 60
#: images/s without them); an actor keeps its peak heap between jobs, which it reuses.
POOL_WORKER_ENV = {"RAY_worker_niceness": "0", "MALLOC_ARENA_MAX": "2",
                   "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
                   "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}

#: Loopback only: the embedded runtime never listens on another interface.
LOOPBACK = "127.0.0.1"

# Java 17 closes these packages; Spark's and RayDP's JVMs reflect into them and die with
# InaccessibleObjectException unless they are opened (the set both need on Java 17).
_OPENED_PACKAGES = [
    ("java.base", p)
    for p in (
        "java.lang", "java.lang.invoke", "java.lang.reflect", "java.io", "java.net",
        "java.nio", "java.util", "java.util.concurrent", "java.util.concurrent.atomic",
        "java.util.regex", "java.math", "java.text", "java.time", "sun.nio.ch",
        "sun.nio.cs", "sun.security.action", "sun.util.calendar",
    )
] + [("java.sql", "java.sql")]

JAVA17_OPTIONS: list[str] = [f"--add-opens={m}/{p}=ALL-UNNAMED" for m, p in _OPENED_PACKAGES]
JAVA17_OPTIONS_STR = " ".join(JAVA17_OPTIONS)

#: The JVM of a local Spark the engine starts itself compiles with C1 only. Its share of
#: a job is reading files and passing Arrow batches to Python, which the model outpaces
#: whatever the compiler; C2's background compiles cost a short job (a 4-image CLI run)
#: a third of its JVM's CPU (20-22 CPU-seconds with C2, 14 with C1). Clusters and a
#: user's own session keep their JVM's settings; `-XX:TieredStopAtLevel=4` in
#: spark_conf's extraJavaOptions restores C2.
EMBEDDED_JVM_OPTIONS = "-XX:TieredStopAtLevel=1"


def spark_conf_for_java17() -> dict[str, str]:
    """Spark settings every session of the engine needs on Java 17."""
    return {
        "spark.driver.extraJavaOptions": JAVA17_OPTIONS_STR,
        "spark.executor.extraJavaOptions": JAVA17_OPTIONS_STR,
        "spark.sql.execution.arrow.pyspark.enabled": "true",
    }


@dataclass
class Runtime:
    """The Spark session and Ray connection one job runs on, and who owns them."""

    spark: "pyspark.sql.SparkSession"  # noqa: F821
    ray_address: str
    started_spark: bool = False
    started_ray: bool = False
    _closed: bool = field(default=False, repr=False)

    def stop(self) -> None:
        """Stop what this runtime started, and only that."""
        if self._closed:
            return
        self._closed = True
        if self.started_spark:
            self.spark.stop()
        if self.started_ray:
            import ray

            ray.shutdown()

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def is_connect(spark) -> bool:
    """True for a Spark Connect session (`SparkSession.builder.remote(...)`): a client
    with no SparkContext, no JVM and no broadcast in this process."""
    return type(spark).__module__.startswith("pyspark.sql.connect")


def spark_remote(remote: str | None = None) -> str | None:
    """The Spark Connect URL to use: `remote`, else $SPARK_REMOTE, as PySpark reads it."""
    return remote or os.environ.get("SPARK_REMOTE") or None


def start_connect_session(remote: str):
    """A Spark Connect session at `remote` (sc://host:port); Spark's settings are the
    server's. Returns (session, started) like start_spark."""
    from pyspark.sql import SparkSession

    if not remote.startswith(("sc://", "local")):  # local: PySpark starts a server itself
        raise ConfigurationError(f"Spark Connect URL {remote!r} is not sc://host:port")
    try:
        session = SparkSession.builder.remote(remote).getOrCreate()
    except ImportError as exc:
        raise ConfigurationError(
            f"Spark Connect's client is not installed ({exc}): pip install "
            "'hybrid-infer[connect]' (Spark 4)") from None
    log.info("joined Spark Connect at %s", remote)
    return session, True


def start_spark(master: str | None = None, app_name: str = "hybrid-infer",
                extra_conf: dict[str, str] | None = None, *, log_level: str | None = "ERROR",
                remote: str | None = None):
    """Return a SparkSession: a new local one on loopback, one bound to `master`, or a
    Spark Connect session at `remote` (sc://host:port; default $SPARK_REMOTE when no
    `master` is given, as PySpark does).

    Returns (session, started) where `started` says whether this call created it.
    `log_level` is set on a session this call creates (None: keep its log4j2
    configuration's); a session that already existed, the user's, keeps its own.
    `extra_conf`'s extraJavaOptions are added to the Java 17 ones, others replace.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    remote = spark_remote(remote) if master is None else remote
    if remote and master:
        raise ConfigurationError(f"a Spark master ({master!r}) and a Spark Connect URL "
                                 f"({remote!r}) were both given: pass one of them")
    active = SparkSession.getActiveSession()
    if active is not None and master is None and (remote is None or is_connect(active)):
        return active, False
    if remote:
        return start_connect_session(remote)

    builder = SparkSession.builder.appName(app_name)
    conf = spark_conf_for_java17()
    if master is None and launched_by_spark_submit():
        pass  # spark-submit (or the operator running it) chose the master: keep it
    elif master is None or master.startswith("local"):
        builder = builder.master(master or "local[*]")
        conf.update({
            "spark.driver.host": LOOPBACK,
            "spark.driver.bindAddress": LOOPBACK,
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "8",
        })
        conf["spark.driver.extraJavaOptions"] += " " + EMBEDDED_JVM_OPTIONS
    else:
        prepare_spark_master(master)
        builder = builder.master(master)
    for key, value in (extra_conf or {}).items():
        joined = key.endswith(".extraJavaOptions") and key in conf
        conf[key] = f"{conf[key]} {value}" if joined else value
    for key, value in conf.items():
        builder = builder.config(key, value)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", LOOPBACK)
    existed = SparkContext._active_spark_context is not None  # a session of another thread
    try:
        session = builder.getOrCreate()
    except Exception as exc:  # py4j / JVM errors are cryptic: say what is missing
        raise ConfigurationError(
            f"could not start a Spark session on master {master or 'local[*]'!r}: {exc}. "
            "Check that Java 17 is installed and, for a cluster, that the master URL is "
            "reachable (spark://host:7077)."
        ) from exc
    if existed:
        return session, False
    if log_level:
        session.sparkContext.setLogLevel(log_level)
    log.info("started Spark on %s", session.sparkContext.master)
    return session, True


def start_raydp_spark(app_name: str = "hybrid-infer-raydp", *, num_executors: int = 1,
                      executor_cores: int = 1, executor_memory: str = "1g",
                      extra_conf: dict[str, str] | None = None):
    """A Spark session running on the connected Ray cluster through RayDP.

    Ray must be connected first (connect_ray sets the JVM flags Ray's Java workers
    need). A process that already started a plain Spark JVM cannot start this one.
    """
    raydp = import_raydp()

    conf = {**spark_conf_for_java17(),
            "spark.ray.raydp_app_master.extraJavaOptions": JAVA17_OPTIONS_STR,
            "spark.driver.host": LOOPBACK, "spark.driver.bindAddress": LOOPBACK,
            "spark.ui.enabled": "false", **(extra_conf or {})}
    # Python UDFs on RayDP's executors run this interpreter (the SparkContext reads it
    # at start), not whatever `python3` comes first on the PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    try:
        return raydp.init_spark(app_name, num_executors, executor_cores, executor_memory,
                                configs=conf)
    except Exception as exc:
        raise ConfigurationError(
            f"could not start RayDP's Spark on Ray: {exc}. Connect Ray first "
            "(hybrid_infer.runtime.connect_ray) and do not start a plain Spark session in "
            "the same process.") from exc


def import_raydp():
    """The raydp module, or a ConfigurationError naming the extra that installs it (or,
    on Spark 4, which no RayDP release supports yet, the Spark 3.5 lane)."""
    import pyspark

    if int(pyspark.__version__.split(".")[0]) >= 4:
        raise ConfigurationError(
            f"the raydp mode needs Spark 3.5: RayDP has no release for Spark 4 (this is "
            f"pyspark {pyspark.__version__}). Install the Spark 3.5 lane (bash "
            "scripts/install.sh spark35, or pip install 'hybrid-infer[raydp]' "
            "'pyspark>=3.5,<3.5.8'), or use mode='hybrid', which serves the same warm pool "
            "on Spark 4")
    try:
        import raydp
    except ImportError as exc:
        raise ConfigurationError(
            f"the raydp mode needs RayDP, which is not installed ({exc}): install the "
            "extra, pip install 'hybrid-infer[raydp]' (RayDP 1.6 needs pyspark <= 3.5.7)"
        ) from None
    return raydp


def launched_by_spark_submit() -> bool:
    """True in a driver started by spark-submit, whose JVM (and master) already exist."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def connect_ray(address: str | None = None, *, num_cpus: int | None = None,
                object_store_memory: int | None = None) -> tuple[str, bool]:
    """Connect this process to Ray; start a local head on loopback when `address` is None.

    Returns (gcs_address, started). Spark tasks use the address to join the same cluster.
    """
    import ray

    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address, False
    from ray.job_config import JobConfig

    # Ray's Java workers (RayDP's app master) need the Java 17 flags too.
    common = dict(namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING,
                  configure_logging=True, job_config=JobConfig(jvm_options=JAVA17_OPTIONS))
    if address is None:
        _keep_ray_on_loopback()
        # An embedded head serves the engine's own actors, which get their own worker
        # processes: idle generic workers prestarted per CPU would only hold memory.
        # (Killing every idle worker too, RAY_num_workers_soft_limit=0, saves ~45 MiB
        # but halves the raydp mode's throughput: Ray Data restarts a worker per task.)
        os.environ.setdefault("RAY_prestart_worker_first_driver", "0")
        ray.init(
            # "local": always a new head of our own; with no address, ray.init joins any
            # cluster it finds on the machine (another user's `ray start`).
            address="local",
            include_dashboard=False,
            _node_ip_address=LOOPBACK,
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            **common,
        )
        started = True
    else:
        address = prepare_ray_address(address)
        prepare_token_auth(address)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigurationError(
                f"could not reach the Ray cluster at {address!r}: {exc}. Start one with "
                "`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head "
                "--node-ip-address=127.0.0.1` or pass the right "
                "--ray-address (host:port of the GCS, 'auto', or ray://host:10001)."
            ) from exc
        started = False
    gcs_address = ray.get_runtime_context().gcs_address
    log.info("%s Ray at %s", "started a local" if started else "joined", gcs_address)
    return gcs_address, started


def prepare_ray_address(address: str, timeout_s: float = 5.0) -> str:
    """Before joining a cluster: fail fast if its GCS does not answer, keep loopback local.

    Returns the address to join: 'auto' resolved to the host:port of the cluster on this
    machine ($RAY_ADDRESS, else the last `ray start`). ray.init would otherwise wait a
    long time on an unreachable address, and would rewrite 127.0.0.1 (also what 'auto'
    finds for a loopback head) to this machine's routable IP, where such a head is not.
    """
    if address == "local" or address.startswith("ray://"):
        return address
    if address == "auto":
        from ray._private.services import get_ray_address_from_environment

        found = get_ray_address_from_environment("auto", None)
        if not found or found == "auto":
            raise ConfigurationError(
                "--ray-address auto found no running Ray on this machine: start one with "
                "`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head "
                "--node-ip-address=127.0.0.1`, or pass its host:port")
        log.info("Ray address 'auto' is %s", found)
        address = found
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise ConfigurationError(f"Ray address {address!r} is not host:port, 'auto' or ray://")
    if host in ("127.0.0.1", "localhost"):
        _keep_ray_on_loopback()
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ConfigurationError(
            f"no Ray cluster answers at {address!r} ({exc}): start one with "
            "`RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head "
            "--node-ip-address=127.0.0.1` or pass the right --ray-address"
        ) from None
    return address


def prepare_token_auth(address: str, timeout_s: float = 5.0) -> None:
    """Join a cluster that uses token authentication at an explicit host:port address.

    Ray turns token mode on by itself only for 'auto'; with an explicit address and no
    RAY_AUTH_MODE it connects without the token and retries for ~20 s. So: ask the GCS
    once without a token; if it refuses, use the token this machine has (RAY_AUTH_TOKEN,
    RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token), or fail in one line saying what to set.
    """
    if os.environ.get("RAY_AUTH_MODE") or address in ("auto", "local") or "://" in address:
        return
    import grpc
    from ray._raylet import AuthenticationTokenLoader, Config
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    channel = grpc.insecure_channel(address)
    try:
        gcs_service_pb2_grpc.NodeInfoGcsServiceStub(channel).GetClusterId(
            gcs_service_pb2.GetClusterIdRequest(), timeout=timeout_s)
        return  # no authentication asked
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
            return  # ray.init reports anything else
    finally:
        channel.close()
    if not AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True):
        raise ConfigurationError(
            f"the Ray cluster at {address!r} uses token authentication and this machine "
            "has no token: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN=<the cluster's token> "
            "(or put the token in ~/.ray/auth_token, or RAY_AUTH_TOKEN_PATH)")
    os.environ["RAY_AUTH_MODE"] = "token"  # this process, and the workers it starts
    Config.initialize("")


def prepare_spark_master(master: str, timeout_s: float = 5.0) -> None:
    """Fail fast when no standalone master answers at a spark:// URL.

    Otherwise the session starts, retries registering for about a minute, and jobs wait
    for executors that never come.
    """
    if not master.startswith("spark://"):
        return  # yarn, k8s://, local: their own clients report errors promptly
    hosts = master[len("spark://"):].split(",")  # spark://h1:7077,h2:7077 (HA masters)
    failures = []
    for host_port in hosts:
        host, _, port = host_port.rpartition(":")
        if not port.isdigit():
            raise ConfigurationError(f"Spark master {master!r} is not spark://host:port")
        try:
            with socket.create_connection((host, int(port)), timeout=timeout_s):
                return
        except OSError as exc:
            failures.append(f"{host_port}: {exc}")
    raise ConfigurationError(
        f"no Spark master answers at {master!r} ({'; '.join(failures)}): start one "
        "(sbin/start-master.sh), pass the right --spark-master, or leave it out to run "
        "on an embedded local Spark")


def _keep_ray_on_loopback() -> None:
    """Make a local Ray head bind to 127.0.0.1 instead of the machine's routable address.

    Ray resolves 127.0.0.1 to a reachable IP unless clustering is disabled; an embedded
    head serves only this machine, so it disables it (read at call time by Ray, and
    inherited by the GCS, raylet and worker processes it spawns).
    """
    from ray._private import ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def start_runtime(spark_master: str | None = None, ray_address: str | None = None, *,
                  spark_conf: dict[str, str] | None = None,
                  object_store_memory: int | None = None,
                  spark_log_level: str | None = "ERROR",
                  spark_remote: str | None = None) -> Runtime:
    """Start (or join) Spark and Ray for one job. Use as a context manager.

    spark_log_level: for a Spark session this starts (start_spark's log_level).
    spark_remote: a Spark Connect URL, sc://host:port (default: $SPARK_REMOTE when no
    spark_master is given); Ray is still joined, or started, by this process."""
    gcs_address, started_ray = connect_ray(ray_address, object_store_memory=object_store_memory)
    try:
        spark, started_spark = start_spark(spark_master, extra_conf=spark_conf,
                                           log_level=spark_log_level, remote=spark_remote)
    except BaseException:
        if started_ray:
            import ray

            ray.shutdown()
        raise
    return Runtime(spark=spark, ray_address=gcs_address, started_spark=started_spark,
                   started_ray=started_ray)
