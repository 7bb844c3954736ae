"""`HybridInferenceModel`: the engine as a Spark ML Transformer, for pyspark.ml.Pipeline.

It holds only Params (strings and numbers), so Spark ML's persistence saves and loads
it (`write().save(path)`, `HybridInferenceModel.load(path)`, or as a PipelineModel
stage); the model itself is named by the `model` Param (a torchvision name, a factory,
a TorchScript / torch.export file or an MLflow URI) and served by the warm pool.
"""

from __future__ import annotations

from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable


class HybridInferenceModel(Transformer, HasInputCol, HasOutputCol, DefaultParamsReadable,
                           DefaultParamsWritable):
    """Adds `outputCol` (the logits) and `errorCol` (why a row failed, else null) to a
    DataFrame whose `inputCol` holds image bytes; the other columns are carried through.
    """

    model = Param(Params._dummy(), "model", "torchvision name, 'pkg.module:factory', "
                  "TorchScript .pt, torch.export .pt2 file, or MLflow URI",
                  typeConverter=TypeConverters.toString)
    weights = Param(Params._dummy(), "weights", "'' (a torchvision name's DEFAULT "
                    "pretrained weights), a torchvision weight name, 'random' or a "
                    "state_dict file",
                    typeConverter=TypeConverters.toString)
    seed = Param(Params._dummy(), "seed", "seed for random weights",
                 typeConverter=TypeConverters.toInt)
    mode = Param(Params._dummy(), "mode", "hybrid or udf", typeConverter=TypeConverters.toString)
    batchSize = Param(Params._dummy(), "batchSize", "the model's batch size",
                      typeConverter=TypeConverters.toInt)
    device = Param(Params._dummy(), "device", "auto, cpu or cuda",
                   typeConverter=TypeConverters.toString)
    numActors = Param(Params._dummy(), "numActors", "pool actors (0: one per GPU, or one)",
                      typeConverter=TypeConverters.toInt)
    topK = Param(Params._dummy(), "topK", "add a top_k column with this many classes (0: none)",
                 typeConverter=TypeConverters.toInt)
    errorCol = Param(Params._dummy(), "errorCol", "column for per-row errors",
                     typeConverter=TypeConverters.toString)
    rayAddress = Param(Params._dummy(), "rayAddress", "Ray cluster address ('' = connected "
                       "or local)", typeConverter=TypeConverters.toString)
    allowPickle = Param(Params._dummy(), "allowPickle", "allow pickled model files (trusted "
                        "files only: can run code)", typeConverter=TypeConverters.toBoolean)

    @keyword_only
    def __init__(self, *, inputCol="content", outputCol="prediction", model="resnet18",
                 weights="", seed=0, mode="hybrid", batchSize=32, device="auto",
                 numActors=0, topK=0, errorCol="error", rayAddress="", allowPickle=False):
        super().__init__()
        self._setDefault(inputCol="content", outputCol="prediction", model="resnet18",
                         weights="", seed=0, mode="hybrid", batchSize=32, device="auto",
                         numActors=0, topK=0, errorCol="error", rayAddress="",
                         allowPickle=False)
        self._set(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol="content", outputCol="prediction", model="resnet18",
                  weights="", seed=0, mode="hybrid", batchSize=32, device="auto",
                  numActors=0, topK=0, errorCol="error", rayAddress="", allowPickle=False):
        return self._set(**self._input_kwargs)

    def _transform(self, dataset):
        from hybrid_infer.api import infer
        from hybrid_infer.output import ERROR, PREDICTION

        get = self.getOrDefault
        out = infer(dataset, get(self.model), mode=get(self.mode),
                    ray_address=get(self.rayAddress) or None,
                    weights=get(self.weights) or None, seed=get(self.seed),
                    allow_pickle=get(self.allowPickle), input_col=get(self.inputCol),
                    top_k=get(self.topK), num_actors=get(self.numActors) or None,
                    batch_size=get(self.batchSize), device=get(self.device))
        return (out.withColumnRenamed(PREDICTION, get(self.outputCol))
                .withColumnRenamed(ERROR, get(self.errorCol)))
