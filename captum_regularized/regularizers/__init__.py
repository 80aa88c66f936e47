"""captum_regularized.regularizers."""

__all__: list[str] = []
