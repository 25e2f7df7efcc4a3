"""Parameter models of update codecs (``codecs``) and their shared rules and messages (``rules``).

The strategies' models are in ``data_specs.strategy_params``.
"""
