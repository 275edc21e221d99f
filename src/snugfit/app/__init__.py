"""App: the command line (a module per subcommand), a whole training run, its report, the demo.

Owns what a user runs and the run folder it writes. May import everything below it:
``snugfit.data``, ``models``, ``memory``, ``train``, ``infer``, ``saving``, ``tasks``,
``callbacks``, ``events``, ``errors`` and ``distributed``; nothing below app imports app.
"""
