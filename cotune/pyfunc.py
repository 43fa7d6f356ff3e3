"""cotune's MLflow pyfunc model, as MLflow's "models from code": `cotune.mlflow_model.save_model` copies this file
into the MLflow model, and `mlflow.pyfunc.load_model(uri)` runs that copy, which hands MLflow the model below.
Nothing is pickled: the model is this code plus the bundle directory (JSON + safetensors) in the model's artifacts.

    model = mlflow.pyfunc.load_model("runs:/<run_id>/model")
    model.predict(df)      # DataFrame: prediction (+ proba_<class> per class, + threshold), as `cotune predict` writes

This file imports mlflow at its top: only MLflow runs it (cotune itself never imports it).
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class CotuneModel(PythonModel):
    """A cotune bundle (a run's model, or a search's final model or ensemble) behind MLflow's pyfunc interface."""

    def load_context(self, context) -> None:
        from cotune.bundle import load
        self.model = load(context.artifacts["bundle"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """What `cotune predict` writes for `model_input`: the raw feature columns of a table (a DataFrame; the
        target column, if present, is ignored), or for array, image and sequence models a float32 array shaped
        like the training samples. The annotation tells MLflow to check the input against the model's
        signature only (a table's columns, or the array's dtype and shape), not against the annotation."""
        from cotune.mlflow_model import prediction_frame
        return prediction_frame(self.model, model_input)


mlflow.models.set_model(CotuneModel())
