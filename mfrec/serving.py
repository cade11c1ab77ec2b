"""Entry file of the logged pyfunc model (MLflow "models from code": nothing is pickled)."""

import mlflow

from mfrec.tracking import MfrecPyfunc

mlflow.models.set_model(MfrecPyfunc())
