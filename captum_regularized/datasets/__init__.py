"""captum_regularized.datasets."""

__all__: list[str] = []
