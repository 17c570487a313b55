"""The prediction service: a thin FastAPI shell that serves the model FashionFlow selected."""
