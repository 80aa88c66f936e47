"""captum_regularized.integrations."""

__all__: list[str] = []
