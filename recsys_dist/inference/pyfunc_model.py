"""What MLflow runs to load a registered version (models from code): it is copied into every
logged model, and names the model class of the installed package (``pyfunc.py``)."""

from mlflow.models import set_model

from recsys_dist.inference.pyfunc import RecommenderModel

set_model(RecommenderModel())
