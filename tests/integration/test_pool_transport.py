"""The transport on a real pool: real Ray actors serving Flight, real Spark tasks."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from pyspark import cloudpickle
from pyspark.sql.types import FloatType

from hybrid_infer import PoolSettings, predict_batch_udf
from hybrid_infer.errors import PoolError
from hybrid_infer.pool.registry import Pool
from hybrid_infer.transport.client import PoolClient, action
from hybrid_infer.transport.protocol import encode_header

cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("stop_new_pools")


def make_plus_half_fn():
    def predict(inputs):
        return inputs + 0.5
    return predict


def self_signed(tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return str(cert), str(key)


def test_a_tls_pool_serves_spark_tasks_and_refuses_a_wrong_token(spark, ray_address,
                                                                  tmp_path):
    cert, key = self_signed(tmp_path)
    settings = PoolSettings(num_actors=1, num_cpus_per_actor=0.5, tls_cert=cert, tls_key=key)
    udf = predict_batch_udf(make_plus_half_fn, return_type=FloatType(), batch_size=8,
                            pool=settings)
    rows = spark.range(40).repartition(2).select(udf("id").alias("y")).collect()
    assert sorted(r["y"] for r in rows) == [i + 0.5 for i in range(40)]
    (name,) = [n for n in Pool.names()
               if Pool.get(n).describe()["actor_settings"].tls_cert == cert]
    address = Pool.get(name).address()
    assert address.manager.startswith("grpc+tls://127.0.0.1:")
    assert all(uri.startswith("grpc+tls://127.0.0.1:") for uri in address.actors)
    assert address.tls_root_cert == open(cert, "rb").read()
    assert "token" not in repr(address) and address.token not in repr(address)
    assert action(address, address.manager, "ping") == b"ok"
    wrong = dataclasses.replace(address, token="not-the-pool-token")
    for uri in (address.manager, *address.actors):
        with pytest.raises(PoolError, match="refused this client's token"):
            action(wrong, uri, "ping")
    with pytest.raises(PoolError, match="refused this client's token"):
        PoolClient(wrong, encode_header("infer"))._open_all()
