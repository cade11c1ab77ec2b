"""The served pyfunc model (MLflow "models from code": this file is the model, nothing is pickled).

It loads a bundle folder logged as the artifact ``recommender`` and answers requests through
:func:`mfrec.serving.contract.answer`, with the same :class:`Recommender` whose ranking
produced the test metrics.
"""

from __future__ import annotations

import gc

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from mfrec.errors import RequestError
from mfrec.serving.contract import answer
from mfrec.serving.recommender import Recommender

# Longest echo of the request that an error message keeps (BadRequest).
ECHO_LIMIT = 1000


class BadRequest(MlflowException):
    """A refused request: MLflow's scoring server answers it with HTTP 400 and the message.

    The server rewrites the message to ``Failed to predict data '<the request>'. Error: ...``,
    with an ``inputs`` payload printed whole; a rewrite that long keeps the request's length
    instead of its text.
    """

    def __init__(self, message: str):
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._message

    @message.setter
    def message(self, value: str) -> None:
        original = getattr(self, "_message", None)
        if original is not None and len(value) > len(original) + ECHO_LIMIT:
            value = f"Failed to predict data ({len(value) - len(original):,} characters, not echoed). \nError: {original}"
        self._message = value


class MfrecPyfunc(mlflow.pyfunc.PythonModel):
    """Answers ``predict``, ``recommend``, ``similar`` and ``fold_in`` requests (docs/serving.md)."""

    def load_context(self, context):
        import torch

        # The server runs requests in threads and each is one small product: intra-op
        # threads would only compete for the cores.
        torch.set_num_threads(1)
        self.rec = Recommender.load(context.artifacts["recommender"])
        self.rec.warm()  # ranked now, not in the first requests
        # Take what is loaded (~500k objects) out of the cyclic collector's full passes, which
        # otherwise stall a request now and then; cycles among them are never collected.
        gc.collect()
        gc.freeze()

    # A type hint MLflow infers no schema from: without one, importing this module prints its
    # "add type hints" warning.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[dict]:
        try:
            return answer(self.rec, model_input, params)
        except RequestError as exc:
            raise BadRequest(str(exc)) from None


mlflow.models.set_model(MfrecPyfunc())
