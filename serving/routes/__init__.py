"""The service's routes, one router per concern: status, model, predict."""
