"""The offline world as a plug-in: registers its data sources, judge and model resolver (``tuneguard.plugins``)."""
