"""captum_regularized.models."""

__all__: list[str] = []
