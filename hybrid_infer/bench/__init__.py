"""The benchmark: every mode side by side over the same generated JPEGs, against the
ceiling (`hybrid-infer bench`, or `python benchmarks/run.py` in a checkout).

  config.py       BenchConfig (the command line) and ContenderConfig (one contender)
  harness.py      generates the images, runs each contender under a hard deadline,
                  checks the logits are equal, writes JSON, Markdown and PNG
  process.py      a command in its own process group, killed whole at its deadline
  worker.py       the entry point of one contender's process
  contenders/     one module per contender
  memory.py       peak PSS/RSS of a process tree
  report.py       equality check, metrics, table, chart
  weight_sharing.py  one copy of the weights for N actors, or N copies
"""
