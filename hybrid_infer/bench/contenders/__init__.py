"""One module per contender; each exposes `run(config: ContenderConfig) -> dict`.

  ceiling            model alone on pre-decoded tensors in a tight loop, plus decode alone
  udf                hybrid_infer.modes.udf, the seed pandas-UDF recipe (the baseline)
  predict_batch_udf  pyspark.ml.functions.predict_batch_udf, model built in make_predict_fn
  ray_data           Ray Data over RayDP: from_spark -> decode tasks -> actor pool
  hybrid             hybrid_infer's hybrid mode: first job cold (pool start), then warm
  raydp              hybrid_infer's raydp mode (Spark on Ray -> Ray Data -> the pool),
                     cold then warm like hybrid

The harness runs each in its own process (`python -m hybrid_infer.bench.worker`).
"""
