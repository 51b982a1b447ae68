"""Developer scripts run from the project root (`python -m scripts.<name>`)."""
