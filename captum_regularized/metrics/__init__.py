"""captum_regularized.metrics."""

__all__: list[str] = []
