"""What runs inside a pool's Ray actors: the model, its pipeline and its runner.

Nothing here imports Ray or PySpark at module level, so an actor's data path can be
built and benchmarked directly (e.g. on a GPU machine without Ray or Spark).
"""
