"""FashionFlow's library: data, model, training, evaluation and the model record.

It knows nothing of Metaflow or FastAPI: the flow and the service are thin shells around it.
"""

__version__ = "0.1.0"
