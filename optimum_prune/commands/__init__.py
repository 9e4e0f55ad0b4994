"""Command-line front ends: `optimum-cli prune` (an optimum-cli plugin) and the `optimum-prune` console script.

Kept free of imports: optimum-cli imports `optimum_prune.commands.prune` every time it starts, for every command.
"""
