"""Attribution methods called exactly like Captum's own.

Each class subclasses Captum's ``GradientAttribution`` (and ``LayerAttribution`` for
layer methods) so it composes with ``NoiseTunnel``, ``captum.metrics`` and
``captum.attr.visualization``.
"""

__all__: list[str] = []
